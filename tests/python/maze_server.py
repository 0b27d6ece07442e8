"""Starting maze-server for the tests: MAZE_SERVER_BIN names the binary."""
import contextlib
import os
import subprocess


@contextlib.contextmanager
def running(*args):
    """maze-server with `args` on a free loopback port: yields (host, port); stops it after, and
    fails if it died meanwhile."""
    proc = subprocess.Popen(
        [os.environ["MAZE_SERVER_BIN"], "--addr", "127.0.0.1:0", *args], stdout=subprocess.PIPE, text=True
    )
    try:
        line = proc.stdout.readline()
        addr = next(word for word in line.split() if word.startswith("http://"))
        host, port = addr.removeprefix("http://").rsplit(":", 1)
        yield host, int(port)
        assert proc.poll() is None, "the server died during the tests"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
