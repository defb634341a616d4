"""`numatp chat`: turns from stdin (a pipe) or a terminal (a pty), /clear and /exit,
Ctrl-C stopping a reply without leaving, and the tokens each turn processed."""
import fcntl
import os
import pty
import re
import select
import subprocess
import sys
import termios
import time

import pytest

import numatp
import synth
from numatp.conversation import Conversation

REPORT = re.compile(r"numatp: prompt (\d+) tokens: (\d+) cached, (\d+) processed, [\d.]+ tok/s"
                    r" \| generated (\d+) tokens?(?:, [\d.]+ tok/s| \(no decode step\))"
                    r"([^\r\n]*)\r?\n")
MAX_TOKENS = 8
SYSTEM = "Be brief."
QUESTIONS = [f"question number {turn}?" for turn in range(10)]
EXIT_S = 60


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    # Greedy, this seed's replies to QUESTIONS (after SYSTEM) end by length and once by its
    # end-of-generation token; to "Tell me" it goes on for thousands of tokens.
    return synth.write_model(tmp_path_factory.mktemp("chat") / "q8.gguf", qtype="Q8_0",
                             seed=12, ctx=4096)


def reports(stderr):
    return [tuple(int(g) for g in m.groups()[:4]) + (m.group(5),)
            for m in map(REPORT.match, stderr.splitlines(keepends=True)) if m]


def assert_each_turn_processes_only_itself(turns):
    """The previous prompt and reply are all in the cache (but a reply's last token, never
    fed back, when it ended by length): only the new turn is processed."""
    for (n_prompt, cached, processed, _, _), (p_prompt, _, _, p_gen, _) in zip(turns[1:],
                                                                              turns[:-1]):
        unfed = 1 if p_gen == MAX_TOKENS else 0
        assert cached == p_prompt + p_gen - unfed
        assert processed == n_prompt - cached


def test_turns_from_stdin_process_only_the_new_turn(model):
    lines = QUESTIONS + ["/clear", QUESTIONS[0], "/exit", "never read"]
    r = subprocess.run([sys.executable, "-m", "numatp", "chat", "-m", str(model), "--nodes", "1",
                        "--system", SYSTEM, "--temp", "0", "-n", str(MAX_TOKENS)],
                       input="\n".join(lines) + "\n", capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    turns = reports(r.stderr)
    assert len(turns) == len(QUESTIONS) + 1
    assert r.stderr.count("numatp: conversation cleared") == 1
    assert_each_turn_processes_only_itself(turns[:10])
    assert {gen for *_, gen, _ in turns[:10]} > {MAX_TOKENS}   # one ended by itself
    # After /clear, the first question again has the first turn's prompt.
    assert turns[10][0] == turns[0][0]
    # The replies are those of the library's Conversation.
    with numatp.load(model, nodes=1) as llm:
        chat = Conversation(llm, system=SYSTEM)
        want = []
        for i, question in enumerate(QUESTIONS + [QUESTIONS[0]]):
            if i == len(QUESTIONS):
                chat.clear()
            want.append("".join(chat.reply(question, max_tokens=MAX_TOKENS, temperature=0)))
    assert r.stdout == "".join(reply + "\n" for reply in want)


def test_end_of_input_leaves(model):
    r = subprocess.run([sys.executable, "-m", "numatp", "chat", "-m", str(model), "--nodes", "1",
                        "--temp", "0", "-n", "2"], input="hello\n", capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert len(reports(r.stderr)) == 1


def test_a_turn_that_does_not_fit_ends_a_piped_chat_in_one_line(model):
    r = subprocess.run([sys.executable, "-m", "numatp", "chat", "-m", str(model), "--nodes", "1",
                        "-c", "64", "--temp", "0", "-n", "2"],
                       input="hi\n" + "many words " * 100 + "\nnever read\n",
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 1
    assert len(reports(r.stderr)) == 1
    assert r.stderr.splitlines()[-1].startswith("numatp: error: prompt of ")
    assert "does not fit the context of 64 tokens" in r.stderr and "Traceback" not in r.stderr


def test_bad_options_fail_in_one_line_before_loading(model):
    for args, match in ((["-n", "0"], "invalid -n 0"), (["--temp", "-1"], "temperature"),
                        (["--stop", ""], "stop")):
        r = subprocess.run([sys.executable, "-m", "numatp", "chat", "-m", str(model), *args],
                           stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
        assert r.returncode == 2
        [line] = r.stderr.splitlines()
        assert line.startswith("numatp: error: ") and match in line


class Terminal:
    """numatp chat in a pseudo-terminal it has as its controlling terminal, so that a
    Ctrl-C typed there reaches its whole process group (workers included) as SIGINT."""

    def __init__(self, args):
        self.master, slave = pty.openpty()
        self.proc = subprocess.Popen([sys.executable, "-m", "numatp", *args], stdin=slave,
                                     stdout=slave, stderr=slave, start_new_session=True,
                                     preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0))
        os.close(slave)
        self.seen = ""
        self.matched = 0   # where the last match of read_until ended

    def read_until(self, pattern, timeout=120):
        """Read until `pattern` (a regex) matches what came after the last match."""
        start = self.matched
        deadline = time.monotonic() + timeout
        while True:
            m = re.compile(pattern).search(self.seen, start)
            if m:
                self.matched = m.end()
                return m
            left = deadline - time.monotonic()
            assert left > 0, f"no {pattern!r} in {self.seen[start:]!r}"
            ready, _, _ = select.select([self.master], [], [], left)
            if ready:
                try:
                    data = os.read(self.master, 4096)
                except OSError:   # the other end closed
                    data = b""
                assert data, f"ended without {pattern!r}: {self.seen[start:]!r}"
                self.seen += data.decode("utf-8", "replace")

    def type(self, text):
        os.write(self.master, text.encode())

    def wait_until_reading(self, timeout=60):
        """Wait until numatp sleeps in the kernel waiting for the terminal. A Ctrl-C that
        comes between readline printing the prompt and its select() is caught by
        Python's handler but does not wake the select() (a race in CPython's readline
        loop): a person pressing it then presses it again; a test must not be that fast."""
        deadline = time.monotonic() + timeout
        while True:
            with open(f"/proc/{self.proc.pid}/wchan") as f:
                where = f.read()
            if any(w in where for w in ("poll", "select", "tty_read", "wait_woken")):
                return
            assert time.monotonic() < deadline, f"numatp is not reading the terminal ({where})"
            time.sleep(0.01)

    def exit_code(self):
        """The exit status, once the output has been read to its end."""
        try:
            self.read_until(r"(?!)", timeout=EXIT_S)   # matches nothing: reads to the end
        except AssertionError as e:
            if "ended without" not in str(e):
                raise
        return self.proc.wait(EXIT_S)

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(EXIT_S)
        os.close(self.master)


def test_ctrl_c_stops_the_reply_and_the_chat_goes_on(model):
    term = Terminal(["chat", "-m", str(model), "--nodes", "2", "--temp", "0", "-n", "3000"])
    try:
        term.read_until(r"Ctrl-C stops a reply\r?\n")
        term.read_until(r"> ")
        term.type("Tell me\n")
        term.read_until(r"Tell me\r?\n(.|\n){40}")   # the echo, then 40 characters of reply
        term.type("\x03")
        stopped = term.read_until(REPORT.pattern)
        assert stopped.group(5) == " | stopped (Ctrl-C)"
        assert int(stopped.group(4)) < 3000
        term.read_until(r"> ")
        term.type("/clear\n")
        term.read_until(r"conversation cleared")
        term.read_until(r"> ")
        term.type("What?\n")
        after = term.read_until(REPORT.pattern)
        assert after.group(5) == ""
        term.read_until(r"> ")
        term.type("/exit\n")
        assert term.proc.wait(EXIT_S) == 0
        assert "Traceback" not in term.seen
    finally:
        term.close()


def test_ctrl_c_at_the_prompt_leaves(model):
    term = Terminal(["chat", "-m", str(model), "--nodes", "1"])
    try:
        term.read_until(r"Ctrl-C stops a reply\r?\n")
        term.read_until(r"> ")
        term.wait_until_reading()
        term.type("\x03")
        assert term.exit_code() == 130, term.seen
        assert "Traceback" not in term.seen
    finally:
        term.close()


def test_a_turn_that_does_not_fit_is_reported_and_the_chat_goes_on(model):
    term = Terminal(["chat", "-m", str(model), "--nodes", "1", "-c", "64"])
    try:
        term.read_until(r"> ")
        term.type("many words " * 30 + "\n")
        term.read_until(r"numatp: error: prompt of .* does not fit the context of 64 tokens"
                        r".*\(/clear starts a new conversation\)\r?\n")
        term.read_until(r"> ")
        term.type("/exit\n")
        assert term.proc.wait(EXIT_S) == 0
        assert "Traceback" not in term.seen
    finally:
        term.close()


def test_chat_with_attention_on_the_gpu_reuses_its_kv_cache(model):
    # The GPU's KV cache holds the history as the CPU's does: each turn processes only its
    # own tokens (the numpy stand-in runs the offload code where there is no GPU).
    lines = QUESTIONS[:3] + ["/exit"]
    r = subprocess.run([sys.executable, "-m", "numatp", "chat", "-m", str(model), "--nodes", "1",
                        "--system", SYSTEM, "--temp", "0", "-n", str(MAX_TOKENS), "--gpu", "attn"],
                       input="\n".join(lines) + "\n", capture_output=True, text=True,
                       timeout=300, env={**os.environ, "NUMATP_GPU_BACKEND": "numpy"})
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    assert "numatp: gpu memory used: " in r.stderr
    turns = reports(r.stderr)
    assert len(turns) == 3
    assert_each_turn_processes_only_itself(turns)
