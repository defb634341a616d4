"""Starting a `numatp serve` for the tools in this directory (soak_serve.py,
bench_serve.py): a subprocess on a free loopback port, its stderr read as it comes (the
per-request lines would otherwise fill the pipe and block it) and kept."""
import re
import subprocess
import sys
import threading

SERVING = re.compile(r"numatp: serving \S+ on (http://\S+/v1) ")


class ServeProcess:
    def __init__(self, args, start_s=600, echo=False):
        self.proc = subprocess.Popen([sys.executable, "-m", "numatp", "serve", "--port", "0",
                                      *map(str, args)],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, start_new_session=True)
        self.lines, self.url, self.echo = [], None, echo
        ready = threading.Event()
        threading.Thread(target=self._read, args=(ready,), daemon=True).start()
        if not ready.wait(start_s) or self.url is None:
            self.proc.kill()
            raise SystemExit("numatp serve did not start:\n" + "".join(self.lines))

    def _read(self, ready):
        for raw in self.proc.stderr:
            line = raw.decode(errors="replace")
            self.lines.append(line)
            if self.echo:
                sys.stderr.write(line)
            m = SERVING.match(line)
            if m:
                self.url = m.group(1)
                ready.set()
        ready.set()

    def stop(self, timeout=60):
        """SIGINT, as Ctrl-C; returns the exit code."""
        import signal
        self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()
