"""What the README and the Makefile tell a new user agrees with the code."""
import re
import subprocess
from pathlib import Path

from numatp.quant import formats

REPO = Path(__file__).resolve().parents[1]


def readme_bullet(label: str) -> str:
    """The text of the README's "- <label>: ..." bullet, its wrapped lines joined."""
    lines = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"- {label}:"))
    text = [lines[start][len(f"- {label}:"):]]
    for line in lines[start + 1:]:
        if not line.startswith("  "):
            break
        text.append(line)
    return " ".join(part.strip() for part in text)


def test_readme_lists_exactly_the_supported_weight_types():
    listed = readme_bullet("Weights").split("(")[0]
    names = [name.strip() for name in listed.split(",")]
    assert names == [formats.type_name(t) for t in formats.SUPPORTED]


def make(*args) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "--no-print-directory", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=60)


def test_make_without_a_target_lists_the_targets():
    # Dry runs (-n) first: where the default goal installs packages, the test must not.
    default, help_ = make("-n"), make("-n", "help")
    assert default.returncode == 0 and help_.returncode == 0, default.stderr + help_.stderr
    assert default.stdout == help_.stdout
    listing = make("help")
    assert listing.returncode == 0, listing.stderr
    targets = re.findall(r"^  (\S+)", listing.stdout, flags=re.M)
    assert targets == ["install", "test", "test-fast", "test-numa"]
