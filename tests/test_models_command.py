"""``ultrares models`` on a terminal (aligned columns, readable at 80 columns) and in a pipe
(tab-separated, quiet when the reader stops early)."""
import os
import subprocess
import sys

from ultrares_stream.commands.models import COLUMNS, NOTE_INDENT, layout

ROWS = [
    ("ultrares-compact-x4", "pair", "SRVGGNetCompact", "x4", "shipped",
     "alpha 0 = ultrares-compact-x4-psnr, alpha 1 = ultrares-compact-x4-gan"),
    ("ultrares-traffic-x4-psnr", "single", "RLFN", "x4", "shipped",
     "shipped; RLFN fine-tuned by this project on traffic degradations (L1) from bytedance/RLFN "
     "(Apache-2.0, ultrares-traffic-x4.NOTICE.md): for GPUs and recorded footage"),
]


def test_narrow_terminal_puts_notes_beneath_whole_names():
    lines = layout(ROWS, 80)
    assert all(len(line) <= 80 for line in lines), lines
    assert lines[0].split() == list(COLUMNS[:-1])
    assert lines[1].split() == list(ROWS[0][:5])  # nothing cut: "SRVGGNetCompact", not "SRVGGNet…"
    notes = [line for line in lines if line.startswith(NOTE_INDENT)]
    assert " ".join(" ".join(n.split()) for n in notes) == " ".join((ROWS[0][5], ROWS[1][5]))
    assert len(lines) == 1 + 2 + len(notes) and len(notes) <= 4  # the long note takes 2-3 lines, not 15


def test_wide_terminal_keeps_one_line_a_model():
    lines = layout(ROWS, 300)
    assert len(lines) == 3 and lines[0].split() == list(COLUMNS)
    arch_at = lines[0].index("architecture")
    assert [line[arch_at:].split()[0] for line in lines[1:]] == ["SRVGGNetCompact", "RLFN"]  # aligned
    assert lines[2].endswith("recorded footage")


def test_pipe_closed_by_its_reader_is_no_error():
    exe = os.path.join(os.path.dirname(sys.executable), "ultrares")
    proc = subprocess.Popen([exe, "models"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # like `| head -0`: nobody reads, so the first write gets EPIPE
    err = proc.communicate(timeout=120)[1].decode()
    assert proc.returncode == 0 and "Traceback" not in err and "BrokenPipe" not in err, err
