"""`tinymem mitigate` and `tinymem eval` as a user sees them: bars on a terminal's stderr, nothing redrawn in a
pipe, and per-epoch metrics only with --verbose. The terminal is a real pseudo-terminal (`pty.openpty`)."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios

TINYMEM = [sys.executable, "-m", "tinymem.cli"]


def run_on_a_terminal(args: list[str], timeout: float = 600) -> tuple[int, str]:
    """Run `tinymem ARGS` with stdout and stderr on a pseudo-terminal; (exit code, everything it showed)."""
    master, slave = pty.openpty()
    # A fresh pseudo-terminal is 0 columns wide, and tqdm draws nothing in no width: give it a window.
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    proc = subprocess.Popen(TINYMEM + args, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    return proc.wait(timeout=timeout), b"".join(chunks).decode(errors="replace")


def mitigate_args(tiny_store, out_dir, *extra: str) -> list[str]:
    root, _stored = tiny_store
    return ["mitigate", "--method", "balanced_subnet", "--preset", "math-tiny", "--root", str(root),
            "--set", "epochs=2", "--set", "ratio=0.1", "--out", str(out_dir), *extra]


def test_mitigate_on_a_terminal_shows_bars_and_no_epoch_lines(tiny_store, tmp_path):
    code, shown = run_on_a_terminal(mitigate_args(tiny_store, tmp_path / "m"))
    assert code == 0, shown
    assert "\r" in shown
    assert "balanced_subnet:" in shown and "epoch" in shown  # the method's bar over its epochs
    assert "eval:" in shown and "phase" in shown  # the evaluation's bar
    assert "forget_loss=" not in shown  # per-epoch metrics are opt-in
    assert "mitigated model:" in shown

    # `tinymem eval` of the result draws its evaluation bar too
    code, shown = run_on_a_terminal(["eval", "--model", str(tmp_path / "m")])
    assert code == 0, shown
    assert "eval:" in shown and "mem_pct" in shown


def test_mitigate_in_a_pipe_draws_nothing_and_verbose_prints_each_epoch(tiny_store, tmp_path):
    r = subprocess.run(TINYMEM + mitigate_args(tiny_store, tmp_path / "m", "--verbose"), capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "\r" not in r.stderr and "%|" not in r.stderr
    epochs = [line for line in r.stderr.splitlines() if "forget_loss=" in line]
    assert len(epochs) == 2 and "epoch=1" in epochs[0] and "epoch=2" in epochs[1]
