"""reports.nvsmi: nvidia-smi CSV memory logs, as users write them, read into a Timeline."""

from __future__ import annotations

import math
import os
from datetime import datetime
from pathlib import Path

import pandas as pd
import pytest

from avatardoctor.errors import InputError
from avatardoctor.reports import nvsmi
from avatardoctor.reports.nvsmi import parse_mib, read_nvidia_smi_csv, unavailable

SEED_HEADER = "timestamp, memory.used [MiB]"  # nvidia-smi --query-gpu=timestamp,memory.used --format=csv -l 1


def log(tmp_path: Path, text: str | bytes, name: str = "gpu_log.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def seed_rows(samples: int, gpus: int, start_s: int = 2) -> list[str]:
    """Rows as the seed command writes them: one per GPU per second, each GPU's query a few ms later."""
    return [
        f"2026/11/20 09:14:{start_s + k:02d}.{100 + 3 * g:03d}, {1000 * (g + 1) + k} MiB"
        for k in range(samples)
        for g in range(gpus)
    ]


def column(timeline, name: str, gpu: str) -> list:
    return timeline.samples.loc[timeline.samples["gpu"] == gpu, name].tolist()


def assert_note(timeline, *parts: str) -> None:
    assert any(all(p in note for p in parts) for note in timeline.notes), timeline.notes


def test_seed_command_one_gpu(tmp_path):
    t = read_nvidia_smi_csv(log(tmp_path, "\n".join([SEED_HEADER, *seed_rows(3, 1)]) + "\n"))
    assert list(t.samples.columns) == ["elapsed_s", "gpu", "used_mib", "total_mib"]
    assert t.samples["gpu"].tolist() == ["0", "0", "0"]
    assert t.samples["elapsed_s"].tolist() == pytest.approx([0.0, 1.0, 2.0])
    assert t.samples["used_mib"].tolist() == [1000.0, 1001.0, 1002.0]
    assert t.samples["total_mib"].isna().all()
    assert t.start == datetime(2026, 11, 20, 9, 14, 2, 100000)
    assert t.notes == ["no index column in gpu_log.csv: one row per sample, read as one GPU"]


def test_seed_command_five_gpus_interleaved(tmp_path):
    t = read_nvidia_smi_csv(log(tmp_path, "\n".join([SEED_HEADER, *seed_rows(4, 5)]) + "\n"))
    assert t.gpus == ["0", "1", "2", "3", "4"]
    assert column(t, "used_mib", "0") == [1000.0, 1001.0, 1002.0, 1003.0]
    assert column(t, "used_mib", "4") == [5000.0, 5001.0, 5002.0, 5003.0]
    assert column(t, "elapsed_s", "3") == pytest.approx([0.009, 1.009, 2.009, 3.009])
    assert t.samples["gpu"].tolist() == [g for g in "01234" for _ in range(4)]  # sorted by gpu, then time
    assert t.notes == ["no index column in gpu_log.csv: GPU = position of the row within each sample (5 GPUs)"]


def test_ten_hz_without_index_groups_rows_by_time(tmp_path):
    rows = [
        f"2026/11/20 09:14:{k // 10:02d}.{(k % 10) * 100 + 2 * g:03d}, {g * 10 + k} MiB"
        for k in range(30)
        for g in range(8)
    ]
    t = read_nvidia_smi_csv(log(tmp_path, "\n".join([SEED_HEADER, *rows]) + "\n"))
    assert t.gpus == [str(g) for g in range(8)]
    assert column(t, "elapsed_s", "7")[:3] == pytest.approx([0.014, 0.114, 0.214])
    assert column(t, "used_mib", "7")[:3] == [70.0, 71.0, 72.0]


def test_nounits_index_and_total(tmp_path):
    text = (
        "timestamp, index, memory.used [MiB], memory.total [MiB]\n"
        "2026/11/20 09:14:02.100, 0, 512, 81559\n"
        "2026/11/20 09:14:02.100, 1, 600, 81559\n"
        "2026/11/20 09:14:03.100, 0, 40000, 81559\n"
        "2026/11/20 09:14:03.100, 1, 700, 81559\n"
    )
    t = read_nvidia_smi_csv(log(tmp_path, text))
    assert column(t, "used_mib", "0") == [512.0, 40000.0]
    assert column(t, "used_mib", "1") == [600.0, 700.0]
    assert t.samples["total_mib"].eq(81559.0).all()
    assert column(t, "elapsed_s", "1") == pytest.approx([0.0, 1.0])
    assert t.notes == []


def test_index_column_keeps_the_real_gpu_numbers(tmp_path):
    # nvidia-smi -i 2,5: the index column says which GPUs these are; positions would say 0 and 1.
    text = "index, timestamp, memory.used [MiB]\n" + "".join(
        f"{g}, 2026/11/20 09:14:0{k}.000, {g * 100 + k} MiB\n" for k in range(3) for g in (2, 5)
    )
    t = read_nvidia_smi_csv(log(tmp_path, text + "[Unknown Error], 2026/11/20 09:14:03.000, 503 MiB\n"))
    assert t.gpus == ["2", "5"]
    assert column(t, "used_mib", "5") == [500.0, 501.0, 502.0]
    assert t.notes == [
        "1 line(s) in gpu_log.csv are not samples and were skipped, first line 8: '[Unknown Error], 2026/11/20 09:14:03.000, 503 MiB'"
    ]


def test_uuid_and_name_columns(tmp_path):
    uuid_a, uuid_b = "GPU-0f1e2d3c-aaaa-bbbb-cccc-000000000001", "GPU-0f1e2d3c-aaaa-bbbb-cccc-000000000002"
    text = "timestamp, name, uuid, memory.used [MiB]\n" + "".join(
        f"2026/11/20 09:14:0{k}.000, NVIDIA H800, {u}, {i * 100 + k} MiB\n"
        for k in range(2)
        for i, u in enumerate((uuid_a, uuid_b))
    )
    t = read_nvidia_smi_csv(log(tmp_path, text))
    assert column(t, "used_mib", "1") == [100.0, 101.0]
    assert t.gpu_names == {"0": "NVIDIA H800", "1": "NVIDIA H800"}
    assert_note(t, "GPUs numbered 0, 1, ... by first appearance of their uuid")

    t = read_nvidia_smi_csv(log(tmp_path, text.replace("name, ", "").replace("NVIDIA H800, ", "")))
    assert t.gpu_names == {"0": uuid_a, "1": uuid_b}


def test_field_order_different_from_the_usual(tmp_path):
    text = (
        "memory.total [MiB], memory.used [MiB], utilization.gpu [%], index, timestamp\n"
        "81559 MiB, 1234 MiB, 100 %, 0, 2026/11/20 09:14:02.500\n"
        "81559 MiB, 2345 MiB, 90 %, 0, 2026/11/20 09:14:04.000\n"
    )
    t = read_nvidia_smi_csv(log(tmp_path, text))
    assert t.samples["used_mib"].tolist() == [1234.0, 2345.0]
    assert t.samples["total_mib"].tolist() == [81559.0, 81559.0]
    assert t.samples["elapsed_s"].tolist() == pytest.approx([0.0, 1.5])


def test_used_from_total_and_free(tmp_path):
    text = "timestamp, memory.total [MiB], memory.free [MiB]\n2026/11/20 09:14:02.000, 81559 MiB, 80000 MiB\n"
    t = read_nvidia_smi_csv(log(tmp_path, text))
    assert t.samples["used_mib"].tolist() == [1559.0]
    assert t.samples["total_mib"].tolist() == [81559.0]
    assert_note(t, "used = memory.total - memory.free")


def test_noheader_with_fields(tmp_path):
    path = log(tmp_path, "".join(f"2026/11/20 09:14:0{k}.000, {g}, {g * 10 + k}\n" for k in range(2) for g in range(2)))
    for fields in (["timestamp", "index", "memory.used"], ["timestamp,index,memory.used"]):
        t = read_nvidia_smi_csv(path, fields=fields)  # nounits too: only the fields can say what is what
        assert column(t, "used_mib", "1") == [10.0, 11.0]
        assert column(t, "elapsed_s", "1") == pytest.approx([0.0, 1.0])


def test_noheader_seed_case_is_inferred(tmp_path):
    t = read_nvidia_smi_csv(log(tmp_path, "\n".join(seed_rows(3, 2)) + "\n"))
    assert column(t, "used_mib", "1") == [2000.0, 2001.0, 2002.0]
    assert (
        t.notes[0]
        == "gpu_log.csv has no header: read column 1 as timestamp, column 2 as memory.used (guessed from the values)"
    )


@pytest.mark.parametrize(
    "rows, says",
    [
        (["2026/11/20 09:14:02.000, 1234", "2026/11/20 09:14:03.000, 1300"], "no 'NNN MiB' column"),  # nounits
        (["2026/11/20 09:14:02.000, 1234 MiB, 81559 MiB"], "2 'NNN MiB' columns"),  # used or total first?
    ],
)
def test_noheader_not_inferable_asks_for_the_header(tmp_path, rows, says):
    path = log(tmp_path, "\n".join(rows) + "\n")
    with pytest.raises(InputError) as raised:
        read_nvidia_smi_csv(path)
    message = str(raised.value)
    assert str(path) in message and says in message and "noheader" in message and "--fields" in message
    assert "\n" not in message


def test_not_available_values_are_gaps(tmp_path):
    text = (
        "timestamp, index, memory.used [MiB], memory.total [MiB]\n"
        "2026/11/20 09:14:02.000, 0, 100 MiB, [Not Supported]\n"
        "2026/11/20 09:14:03.000, 0, [N/A], [Not Supported]\n"
        "2026/11/20 09:14:04.000, 0, 300 MiB, [Not Supported]\n"
    )
    t = read_nvidia_smi_csv(log(tmp_path, text))
    assert t.samples["used_mib"].tolist()[::2] == [100.0, 300.0] and math.isnan(t.samples["used_mib"][1])
    assert t.samples["total_mib"].isna().all()
    assert t.samples["elapsed_s"].tolist() == pytest.approx([0.0, 1.0, 2.0])
    assert t.notes == ["4 memory value(s) in gpu_log.csv not available ([N/A] or similar): left as gaps"]


def test_last_line_cut_off_by_a_crash(tmp_path):
    # "12" is the start of "12345 MiB": it must not become a 12 MiB sample at the moment of the crash.
    text = "\n".join([SEED_HEADER, *seed_rows(2, 1)]) + "\n2026/11/20 09:14:04.100, 12"
    t = read_nvidia_smi_csv(log(tmp_path, text))
    assert t.samples["used_mib"].tolist() == [1000.0, 1001.0]
    assert_note(t, "last line 4 of gpu_log.csv is cut off", "skipped")

    t = read_nvidia_smi_csv(log(tmp_path, "\n".join([SEED_HEADER, *seed_rows(2, 1)]) + "\n2026/11/20 09:14:0"))
    assert len(t.samples) == 2


def test_junk_lines_and_a_repeated_header(tmp_path):
    rows = seed_rows(4, 2)
    lines = [
        "Unable to determine the device handle for GPU0000:3B:00.0: Unknown Error",
        SEED_HEADER,
        *rows[:4],
        "",
        "Unable to determine the device handle for GPU0000:3B:00.0: Unknown Error",
        "2026/11/20 09:14:05.100, garbage MiB",
        "Failed to get the time, 5 MiB",
        SEED_HEADER,
        *rows[4:],
    ]
    t = read_nvidia_smi_csv(log(tmp_path, "\n".join(lines) + "\n"))
    assert column(t, "used_mib", "0") == [1000.0, 1001.0, 1002.0, 1003.0]
    assert column(t, "used_mib", "1") == [2000.0, 2001.0, 2002.0, 2003.0]
    assert column(t, "elapsed_s", "1") == pytest.approx([0.003, 1.003, 2.003, 3.003])
    assert_note(t, "4 line(s) in gpu_log.csv are not samples", "first line 1: 'Unable to determine")
    assert_note(t, "1 repeated header(s) in gpu_log.csv skipped", "line 11")
    assert_note(t, "1 blank line(s)", "line 7")


def test_sample_missing_a_gpu_row_is_skipped_without_index(tmp_path):
    rows = seed_rows(3, 3)
    del rows[4]  # GPU 1 of the second sample; nvidia-smi printed an error instead
    t = read_nvidia_smi_csv(log(tmp_path, "\n".join([SEED_HEADER, *rows]) + "\n"))
    assert column(t, "used_mib", "2") == [3000.0, 3002.0]  # not GPU 2's row shifted into GPU 1
    assert_note(t, "1 sample(s) in gpu_log.csv without exactly 3 rows skipped", "line 5")


def test_non_utf8_bytes(tmp_path):
    text = "timestamp, name, memory.used [MiB]\n2026/11/20 09:14:02.000, NVIDIA H\xff800, 10 MiB\n\xfe\xff junk\n"
    t = read_nvidia_smi_csv(log(tmp_path, text.encode("latin-1")))
    assert t.samples["used_mib"].tolist() == [10.0]
    assert t.gpu_names == {"0": "NVIDIA H\ufffd800"}
    assert_note(t, "gpu_log.csv is not valid UTF-8: 3 undecodable byte sequence(s) replaced")
    assert_note(t, "1 line(s) in gpu_log.csv are not samples", "first line 3")


def test_timestamps_going_backwards(tmp_path):
    # Two logs appended: the second started an hour "earlier" (clock change).
    first = [f"2026/11/20 10:00:0{k}.000, {100 + k} MiB" for k in range(3)]
    second = [f"2026/11/20 09:00:0{k}.000, {200 + k} MiB" for k in range(3)]
    t = read_nvidia_smi_csv(log(tmp_path, "\n".join([SEED_HEADER, *first, SEED_HEADER, *second]) + "\n"))
    assert t.samples["used_mib"].tolist() == [100.0, 101.0, 102.0, 200.0, 201.0, 202.0]  # file order kept
    assert t.samples["elapsed_s"].tolist() == pytest.approx([0.0, 1.0, 2.0, 3.0, 4.0, 5.0])
    assert t.start == datetime(2026, 11, 20, 10, 0, 0)
    assert_note(t, "timestamps in gpu_log.csv go back 1 time(s), first at line 6", "placed 1 s after")


def test_no_timestamp_column(tmp_path):
    t = read_nvidia_smi_csv(log(tmp_path, "index, memory.used [MiB]\n0, 10 MiB\n1, 20 MiB\n0, 11 MiB\n1, 21 MiB\n"))
    assert column(t, "elapsed_s", "1") == [0.0, 1.0]
    assert column(t, "used_mib", "1") == [20.0, 21.0]
    assert t.start is None
    assert_note(t, "no timestamp column in gpu_log.csv: samples assumed 1 s apart")


@pytest.mark.parametrize(
    "text, says",
    [
        ("", "gpu_log.csv is empty: nothing to plot"),
        ("\n \n", "gpu_log.csv is empty: nothing to plot"),
        (SEED_HEADER + "\n", "no samples in gpu_log.csv: nothing to plot"),
        (
            "timestamp, utilization.gpu [%]\n2026/11/20 09:14:02.000, 100 %\n",
            "no memory.used column in gpu_log.csv: nothing to plot",
        ),
    ],
)
def test_nothing_to_plot_is_an_empty_timeline_with_a_note(tmp_path, text, says):
    t = read_nvidia_smi_csv(log(tmp_path, text))
    assert t.samples.empty and list(t.samples.columns) == ["elapsed_s", "gpu", "used_mib", "total_mib"]
    assert says in t.notes


def test_unreadable_or_huge_file_is_an_input_error(tmp_path, monkeypatch):
    with pytest.raises(InputError, match="cannot read .*missing.csv"):
        read_nvidia_smi_csv(tmp_path / "missing.csv")
    monkeypatch.setattr(nvsmi, "MAX_BYTES", 10)
    with pytest.raises(InputError, match="too big for a GPU memory log"):
        read_nvidia_smi_csv(log(tmp_path, "\n".join([SEED_HEADER, *seed_rows(2, 1)]) + "\n"))


def test_unit_helpers():
    values = pd.Series(["1234 MiB", "56", "[N/A]", "N/A", "[Not Supported]", "12x"])
    assert parse_mib(values).tolist()[:2] == [1234.0, 56.0] and parse_mib(values)[2:].isna().all()
    assert unavailable(values).tolist() == [False, False, True, True, True, False]


def test_a_cut_off_last_line_is_not_also_counted_as_blank(tmp_path):
    log = tmp_path / "cut.csv"
    log.write_text("timestamp, memory.used [MiB]\n2026/11/20 09:00:00.000, 1000 MiB\n2026/11/20 09:00:01.000, 30")
    timeline = read_nvidia_smi_csv(log)
    assert list(timeline.samples["used_mib"]) == [1000.0]
    assert not any("blank" in n for n in timeline.notes)
    assert any("last line 3 of cut.csv is cut off" in n for n in timeline.notes)


@pytest.mark.parametrize("index", ["999999999", "99999999999999999999999", "1024", "-1"])
def test_an_index_that_is_no_gpus_is_a_skipped_line_not_a_huge_table(tmp_path, index):
    text = (
        "timestamp, index, memory.used [MiB]\n2026/11/20 09:14:02.000, 0, 10 MiB\n"
        f"2026/11/20 09:14:02.000, {index}, 20 MiB\n"
    )
    t = read_nvidia_smi_csv(log(tmp_path, text))
    assert t.gpus == ["0"] and t.samples["used_mib"].tolist() == [10.0]
    assert_note(t, "1 line(s) in gpu_log.csv have an index that is no GPU's (not 0-1023): skipped, first line 3")


@pytest.mark.parametrize("index", ["²", "1.5", "0x1", "[N/A]"])
def test_an_index_that_is_not_a_number_is_junk(tmp_path, index):
    text = (
        "timestamp, index, memory.used [MiB]\n2026/11/20 09:14:02.000, 1, 10 MiB\n"
        f"2026/11/20 09:14:02.000, {index}, 20 MiB\n"
    )
    t = read_nvidia_smi_csv(log(tmp_path, text))
    assert t.gpus == ["1"] and t.samples["used_mib"].tolist() == [10.0]
    assert_note(t, "1 line(s) in gpu_log.csv are not samples", "first line 3")


def test_blank_lines_before_the_log(tmp_path):
    for body in (SEED_HEADER + "\n" + "\n".join(seed_rows(2, 1)), "\n".join(seed_rows(2, 1))):
        t = read_nvidia_smi_csv(log(tmp_path, "\n" * 60 + body + "\n"))
        assert t.samples["used_mib"].tolist() == [1000.0, 1001.0]
        assert_note(t, "60 blank line(s) in gpu_log.csv skipped, first at line 1")


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16", "utf-16-le", "utf-16-be"])
def test_a_bom_or_utf16_log_has_its_header(tmp_path, encoding):
    text = "\n".join([SEED_HEADER, *seed_rows(2, 1)]) + "\n"
    raw = text.encode(encoding)
    if encoding in ("utf-16-le", "utf-16-be"):  # Windows' "Unicode" redirection writes the BOM
        raw = ("\ufeff" + text).encode(encoding)
    t = read_nvidia_smi_csv(log(tmp_path, raw))
    assert t.samples["used_mib"].tolist() == [1000.0, 1001.0]
    assert not any("no header" in n for n in t.notes)


@pytest.mark.parametrize(
    "unit, values, mib",
    [("GiB", "10.5 GiB", 10752.0), ("GiB", "10.5", 10752.0), ("KiB", "2048 KiB", 2.0), ("MiB", "7", 7.0)],
)
def test_the_headers_unit_is_honoured(tmp_path, unit, values, mib):
    t = read_nvidia_smi_csv(log(tmp_path, f"timestamp, memory.used [{unit}]\n2026/11/20 09:14:02.000, {values}\n"))
    assert t.samples["used_mib"].tolist() == [mib]


def test_a_unit_that_is_not_memory_is_said_not_guessed(tmp_path):
    t = read_nvidia_smi_csv(log(tmp_path, "timestamp, memory.used [%]\n2026/11/20 09:14:02.000, 50 %\n"))
    assert t.samples.empty
    assert_note(t, "memory.used [%] in gpu_log.csv: not a unit of memory")


def test_a_row_cut_mid_number_inside_the_log_is_skipped(tmp_path):
    rows = seed_rows(3, 1)
    rows[1] = rows[1].split(" MiB")[0][:-3]  # "2026/11/20 09:14:03.100, 1" of "... 1001 MiB"; then the log went on
    t = read_nvidia_smi_csv(log(tmp_path, "\n".join([SEED_HEADER, *rows]) + "\n"))
    assert t.samples["used_mib"].tolist() == [1000.0, 1002.0]
    assert_note(t, "1 line(s) in gpu_log.csv are not samples", "first line 3")


@pytest.mark.parametrize("value", ["inf", "-5", "1e300", "nan"])
def test_memory_values_no_gpu_can_hold_are_junk(tmp_path, value):
    t = read_nvidia_smi_csv(
        log(
            tmp_path,
            f"timestamp, index, memory.used [MiB]\n2026/11/20 09:14:02.000, 0, 5 MiB\n2026/11/20 09:14:03.000, 0, {value} MiB\n",
        )
    )
    assert t.samples["used_mib"].tolist() == [5.0]


def test_the_log_is_read_in_chunks_with_the_same_result(tmp_path, monkeypatch):
    lines = [SEED_HEADER, *seed_rows(40, 3)]
    lines[50:50] = ["", "Unable to determine the device handle for GPU0000:3B:00.0: Unknown Error", SEED_HEADER]
    path = log(tmp_path, "\n".join(lines) + "\n2026/11/20 09:14:4")
    whole = read_nvidia_smi_csv(path)
    monkeypatch.setattr(nvsmi, "CHUNK_CHARS", 100)  # a line crosses every chunk boundary
    chunked = read_nvidia_smi_csv(path)
    pd.testing.assert_frame_equal(whole.samples, chunked.samples)
    assert whole.notes == chunked.notes and len(whole.samples) == 120


def test_the_samples_kept_are_bounded_and_the_note_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(nvsmi, "CHUNK_CHARS", 100)
    monkeypatch.setattr(nvsmi, "MAX_SAMPLES", 10)
    t = read_nvidia_smi_csv(log(tmp_path, "\n".join([SEED_HEADER, *seed_rows(40, 1)]) + "\n"))
    assert 10 <= len(t.samples) < 40
    assert_note(t, "gpu_log.csv has over 10 samples: read up to line", "the rest left unread")


def test_thousands_of_uuids_are_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(nvsmi, "MAX_GPUS", 3)
    text = "timestamp, uuid, memory.used [MiB]\n" + "".join(
        f"2026/11/20 09:14:02.000, GPU-{i:04d}, {i} MiB\n" for i in range(5)
    )
    t = read_nvidia_smi_csv(log(tmp_path, text))
    assert t.gpus == ["0", "1", "2"]
    assert_note(t, "2 line(s) in gpu_log.csv name a GPU past the first 3 different ones")


@pytest.mark.parametrize("make", [lambda p: os.mkfifo(p), lambda p: p.symlink_to("/dev/zero"), lambda p: p.mkdir()])
def test_only_a_regular_file_is_read(tmp_path, make):
    path = tmp_path / "gpu_log.csv"
    make(path)
    with pytest.raises(InputError, match="cannot read .*gpu_log.csv: not a regular file"):
        read_nvidia_smi_csv(path)
