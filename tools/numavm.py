#!/usr/bin/env python3
"""Run a command inside a throw-away QEMU virtual machine that has several NUMA nodes.

The development and CI machines have one NUMA node, so numatp's placement code (memory
binding, move_pages, CPU pinning per node) can only be exercised for real in a VM whose
kernel sees several nodes. This script boots one with virtme-ng (`vng`):

- N nodes (default 2), each with its own CPUs and memory; QEMU's default distances
  (10 local, 20 remote).
- The guest's root filesystem is the host's, shared read-only over 9p, so the guest runs
  the host's Python and packages. The current directory (the repository) is at the same
  path in the guest, under a writable overlay whose writes are discarded: an editable
  `pip install -e .` resolves there exactly as on the host.
- The command runs in the current directory; its stdout and stderr are relayed, and its
  exit code becomes this script's exit code.
- Caches that would live under HOME (read-only in the guest) start empty in a guest
  /tmp directory; the Numba cache starts as a copy of NUMAVM_NUMBA_CACHE_DIR if set.

Exit codes of the script itself: 124 when the timeout expired, 125 when the VM cannot
be started (missing dependency) or stopped before the command finished.

Software emulation (TCG) is used because /dev/kvm does not work on these machines; guest
code runs ~20-45x slower than on the host, so keep what runs inside small and start the
VM once for all of it.

Usage:  tools/numavm.py [options] -- CMD [ARG...]
        make test-numa        (runs pytest tests/numa this way)
Install what it needs (Debian, as root): tools/install-numavm-deps.sh
"""
import argparse
import glob
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time

INSTALL_HINT = "run tools/install-numavm-deps.sh as root"
CANNOT_RUN = 125  # like timeout(1): the harness or the VM failed, not the command
TIMED_OUT = 124

# virtme-ng already puts writable tmpfs overlays on these host directories; a second
# overlay for a directory inside one of them is neither needed nor reliable.
VNG_OVERLAID = ("/etc", "/lib", "/home", "/opt", "/srv", "/usr", "/var", "/tmp")

# Host environment variables the guest command gets (by name or prefix). The guest starts
# from a minimal environment; these are the ones that change how Python, numpy, Numba,
# OpenMP and the tests behave.
PASSED_ENV = ("LANG", "LC_", "TZ", "PYTHON", "NUMBA_", "NUMATP_", "OMP_", "GOMP_",
              "OPENBLAS_", "MKL_", "HYPOTHESIS_", "PYTEST_", "PYENV", "VIRTUAL_ENV", "CI")

# HOME is read-only in the guest (only the directories above are overlaid); these point
# every cache we know of at a fresh guest /tmp directory. The Numba cache must not be the
# host's anyway: the guest CPU has no AVX-512, so host-compiled entries do not apply.
GUEST_CACHE_ENV = ("NUMBA_CACHE_DIR", "XDG_CACHE_HOME", "MPLCONFIGDIR")


class NumaVMError(Exception):
    """The VM cannot start: a message for the user (exit code CANNOT_RUN)."""


class Stopped(Exception):
    """This script got a signal that ends it; the VM is stopped first."""

    def __init__(self, signum):
        super().__init__(signum)
        self.signum = signum


def main(argv=None):
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="numavm-") as exchange:
        try:
            vng, kernel = find_dependencies(args.kernel)
            script = write_guest_script(exchange, args)
        except NumaVMError as e:
            print(f"numavm: {e}", file=sys.stderr)
            return CANNOT_RUN
        vng_cmd = [vng, *vm_options(args, kernel, exchange), "--exec", f"bash {script}"]
        cpus = f"{args.cpus_per_node} CPU{'s' if args.cpus_per_node > 1 else ''}"
        print(f"numavm: booting a {args.nodes}-node VM ({cpus}, {args.mem_per_node} MiB "
              f"per node) to run: {shlex.join(args.command)}", file=sys.stderr, flush=True)
        start = time.monotonic()
        try:
            vng_rc, timed_out = run_relaying_output(vng_cmd, vng, args.timeout)
        except Stopped as e:
            print(f"numavm: stopped by {signal.Signals(e.signum).name}; VM stopped",
                  file=sys.stderr)
            return 128 + e.signum
        elapsed = time.monotonic() - start
        command_rc = read_status(os.path.join(exchange, "status"))
    if timed_out:
        print(f"numavm: timed out after {args.timeout} s (NUMAVM_TIMEOUT); VM stopped",
              file=sys.stderr)
        return TIMED_OUT
    if command_rc is None:
        print(f"numavm: the VM stopped before the command finished (vng exit code "
              f"{vng_rc}); see the output above", file=sys.stderr)
        return CANNOT_RUN
    print(f"numavm: command exited with {command_rc} after {elapsed:.0f} s "
          f"(boot included)", file=sys.stderr)
    return command_rc


def read_status(path):
    """The command's exit code as the guest recorded it, None if it never finished."""
    try:
        with open(path) as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


def parse_args(argv):
    env = os.environ.get
    p = argparse.ArgumentParser(
        prog="numavm.py", usage="%(prog)s [options] -- CMD [ARG...]",
        description="Run CMD in the current directory inside a throw-away QEMU VM with "
                    "several NUMA nodes; exit with CMD's exit code.")
    p.add_argument("--nodes", type=int, default=int(env("NUMAVM_NODES", 2)),
                   help="NUMA nodes (NUMAVM_NODES, default 2)")
    p.add_argument("--cpus-per-node", type=int, default=int(env("NUMAVM_CPUS_PER_NODE", 1)),
                   help="CPUs per node (NUMAVM_CPUS_PER_NODE, default 1)")
    p.add_argument("--mem-per-node", type=mebibytes, default=env("NUMAVM_MEM_PER_NODE", "2560M"),
                   help="memory per node, e.g. 2G or 2560M (NUMAVM_MEM_PER_NODE, default 2560M)")
    p.add_argument("--timeout", type=int, default=int(env("NUMAVM_TIMEOUT", 1200)),
                   help="seconds before the VM is killed, boot included "
                        "(NUMAVM_TIMEOUT, default 1200)")
    p.add_argument("--kernel", default=env("NUMAVM_KERNEL"),
                   help="guest kernel (NUMAVM_KERNEL; default: newest /boot/vmlinuz-* "
                        "whose modules include 9p)")
    p.add_argument("--kvm", action="store_true", default=env("NUMAVM_KVM") == "1",
                   help="use KVM instead of software emulation (NUMAVM_KVM=1; "
                        "fails on these machines)")
    p.add_argument("command", nargs=argparse.REMAINDER)
    args = p.parse_args(argv)
    if args.command[:1] == ["--"]:
        args.command = args.command[1:]
    if not args.command:
        p.error("no command given")
    if args.nodes < 1 or args.cpus_per_node < 1:
        p.error("--nodes and --cpus-per-node must be at least 1")
    return args


def mebibytes(text):
    m = re.fullmatch(r"(\d+)([MmGg]?)", text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"not a size like 2G or 2560M: {text!r}")
    return int(m.group(1)) * (1024 if m.group(2).lower() == "g" else 1)


def find_dependencies(kernel):
    """Paths of vng and the guest kernel; NumaVMError naming whatever is missing."""
    # vng sits next to the Python that pip installed it for, which need not be on PATH.
    scripts = sysconfig.get_path("scripts")
    vng = shutil.which("vng", path=os.pathsep.join([scripts, os.environ.get("PATH", "")]))
    missing = []
    if vng is None:
        missing.append("virtme-ng (vng)")
    if shutil.which("qemu-system-x86_64") is None:
        missing.append("qemu-system-x86_64")
    if not any(shutil.which(b) for b in ("busybox", "busybox-static", "busybox.static")):
        missing.append("busybox")
    if kernel is None:
        kernel = find_kernel()
        if kernel is None:
            missing.append("a kernel with 9p modules in /boot (linux-image-amd64; "
                           "the -cloud kernel lacks 9p)")
    elif not os.access(kernel, os.R_OK):
        raise NumaVMError(f"cannot read the kernel {kernel} (NUMAVM_KERNEL)")
    if missing:
        raise NumaVMError(f"missing {', '.join(missing)}; {INSTALL_HINT}")
    return vng, kernel


def find_kernel():
    """The newest readable /boot/vmlinuz-VERSION whose modules provide 9p over virtio,
    which virtme-ng needs to share the host filesystem."""
    def has_9p(version):
        for listing in ("modules.dep", "modules.builtin"):
            try:
                with open(f"/lib/modules/{version}/{listing}") as f:
                    if "9pnet_virtio" in f.read():
                        return True
            except OSError:
                pass
        return False

    def natural(path):
        return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path)]

    candidates = [k for k in glob.glob("/boot/vmlinuz-*")
                  if os.access(k, os.R_OK) and has_9p(k[len("/boot/vmlinuz-"):])]
    return max(candidates, key=natural, default=None)


def vm_options(args, kernel, exchange):
    n, cpn, mem = args.nodes, args.cpus_per_node, args.mem_per_node
    opts = ["--run", kernel, "--cpus", str(n * cpn), "--memory", f"{n * mem}M"]
    for node in range(n):
        opts += ["--numa", f"{mem}M,cpus={node * cpn}-{node * cpn + cpn - 1}"]
    if not args.kvm:
        opts.append("--disable-kvm")
    cwd = os.getcwd()
    if cwd != "/" and not any(cwd == d or cwd.startswith(d + "/") for d in VNG_OVERLAID):
        opts += ["--overlay-rwdir", cwd]
    # The exchange directory is shared writable: the guest leaves the exit status there.
    opts += ["--rwdir", exchange]
    return opts


def write_guest_script(exchange, args):
    """A bash script in the shared exchange directory that sets up the guest environment,
    runs the command and records its exit status. Passing the command as a file avoids
    quoting it through the kernel command line."""
    env = {k: v for k, v in os.environ.items()
           if k.startswith(PASSED_ENV) and k not in GUEST_CACHE_ENV}
    # The VM's shape, for tests that check what the kernel reports against it
    # (tests/numa/conftest.py); NUMAVM_GUEST also tells them they run inside.
    env.update(NUMAVM_GUEST="1", NUMAVM_NODES=str(args.nodes),
               NUMAVM_CPUS_PER_NODE=str(args.cpus_per_node),
               NUMAVM_MEM_PER_NODE=f"{args.mem_per_node}M")
    # The Python running this script comes first on PATH, so `python3` in the guest is
    # this one even where the host reaches it through a shim (pyenv) or a venv.
    env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable),
                                   os.environ.get("PATH", "/usr/bin:/bin")])
    env["PYTHONUNBUFFERED"] = "1"  # output arrives as the slow guest produces it
    env["TMPDIR"] = "/tmp"
    cwd = os.getcwd()
    status = os.path.join(exchange, "status")
    lines = ["#!/bin/bash"]
    lines += [f"export {k}={shlex.quote(v)}" for k, v in sorted(env.items())]
    lines += [
        'scratch=$(mktemp -d /tmp/numavm-guest.XXXXXX)',
        *[f'export {k}="$scratch/{k.lower()}"' for k in GUEST_CACHE_ENV],
        *seed_numba_cache(),
        f"cd {shlex.quote(cwd)} || "
        f"{{ echo {shlex.quote(f'numavm: {cwd} is not visible in the guest')} >&2; exit 1; }}",
        'read -r up _ < /proc/uptime && echo "numavm: guest up after ${up%.*} s" >&2',
        shlex.join(args.command),
        f"echo $? > {shlex.quote(status)}",
    ]
    path = os.path.join(exchange, "guest.sh")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def seed_numba_cache():
    """Guest script lines that start the guest's Numba cache as a copy of
    NUMAVM_NUMBA_CACHE_DIR, a host directory filled for the guest's CPU (see
    tools/numavm_warm.py): compiling inside the emulated guest takes an hour, loading
    takes seconds. A copy, so that any host path works and the guest writes nothing back."""
    seed = os.environ.get("NUMAVM_NUMBA_CACHE_DIR")
    if not seed:
        return []
    if not os.path.isdir(seed):
        raise NumaVMError(f"NUMAVM_NUMBA_CACHE_DIR={seed} is not a directory")
    return [f'mkdir -p "$NUMBA_CACHE_DIR" && cp -R {shlex.quote(seed)}/. "$NUMBA_CACHE_DIR" || exit 1']


def run_relaying_output(cmd, vng, timeout):
    """Run vng, copy its output through, kill the whole VM process group on timeout or
    when this script is interrupted. Returns (exit code, timed out)."""
    env = dict(os.environ)
    # vng starts virtme-run by name from its own directory.
    env["PATH"] = os.pathsep.join([os.path.dirname(vng), env.get("PATH", "")])
    # Pipes, not our stdout/stderr directly: QEMU writes its console chardevs at offset
    # 0 when they are regular files, so redirected output would be overwritten.
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, start_new_session=True)
    relays = [threading.Thread(target=relay, args=(src, dst), daemon=True)
              for src, dst in ((proc.stdout, sys.stdout), (proc.stderr, sys.stderr))]
    for t in relays:
        t.start()

    def stop(signum, frame):
        raise Stopped(signum)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, stop)
    timed_out = False
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
    finally:
        if proc.poll() is None:
            kill_group(proc)
        for t in relays:
            t.join(timeout=5)
    return proc.returncode, timed_out


def relay(src, dst):
    dst.flush()
    fd, writable = dst.fileno(), True
    while chunk := os.read(src.fileno(), 65536):
        if writable:
            try:
                while chunk:
                    chunk = chunk[os.write(fd, chunk):]
            except OSError:  # our reader went away (| head): keep draining, or QEMU blocks
                writable = False


def kill_group(proc):
    for sig, grace in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            pass


if __name__ == "__main__":
    sys.exit(main())
