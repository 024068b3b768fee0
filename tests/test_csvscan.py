"""The structural scanner: record boundaries, lines and field counts, whatever the block size."""

from __future__ import annotations

import pytest

from cutover.csvscan import index_records, read_header, scan_file
from cutover.errors import StructuralError

COLS = ("a", "b", "c")


def _write(tmp_path, data: bytes):
    path = tmp_path / "t.csv"
    path.write_bytes(data)
    return path


def _records(path, batch_bytes):
    """(line, fields, text) of every record, batch by batch."""
    fscan = scan_file(path, COLS, batch_bytes)
    data = path.read_bytes()
    out = []
    for b in fscan.batches:
        buf = data[b.start:b.end]
        idx = index_records(buf, b.first_line, path)
        out += [(int(idx.lines[i]), int(idx.fields[i]), buf[idx.starts[i]:idx.ends[i]].decode())
                for i in range(len(idx)) if not idx.blank[i]]
    return fscan, out


BODY = (
    b"a,b,c\n"
    b'1,"multi\nline, with comma",x\n'
    b"2,,\r\n"
    b"\n"
    b'3,"caf\xc3\xa9 \xe2\x9c\x93 ""q""",z\n'
    b"4,too,many,fields\n"
    b"5,few\n"
    b'6,"",last'
)
EXPECTED = [
    (2, 3, '1,"multi\nline, with comma",x'),
    (4, 3, "2,,"),
    (6, 3, '3,"café ✓ ""q""",z'),
    (7, 4, "4,too,many,fields"),
    (8, 2, "5,few"),
    (9, 3, '6,"",last'),
]


@pytest.mark.parametrize("batch_bytes", [1, 2, 3, 5, 7, 16, 1 << 20])
def test_every_block_size_gives_the_same_records(tmp_path, batch_bytes):
    path = _write(tmp_path, BODY)
    fscan, records = _records(path, max(batch_bytes, 1))
    assert records == EXPECTED
    assert fscan.batches[0].start == len(b"a,b,c\n")
    assert [b.first_line for b in fscan.batches[1:]] == [b.end_line for b in fscan.batches[:-1]]


def test_utf8_split_across_blocks_is_not_an_error_but_bad_bytes_are(tmp_path):
    ok = _write(tmp_path, "a,b,c\n1,\u00e9\u00e9\u00e9\u00e9,\u65e5\u672c\n".encode())
    for size in range(1, 12):
        scan_file(ok, COLS, size)
    bad = _write(tmp_path, b"a,b,c\n1,x,y\n2,Jos\xe9,z\n")
    with pytest.raises(StructuralError) as e:
        scan_file(bad, COLS, 4)
    assert e.value.line == 3 and "0xe9" in str(e.value) and "character 6" in str(e.value)


def test_a_quote_inside_an_unquoted_field_is_a_structural_error(tmp_path):
    # An odd number of quotes: pass 1 blames the stray quote, not a phantom unterminated field.
    path = _write(tmp_path, b'a,b,c\n1,x,y\n2,5\'10" tall,z\n3,"ok",w\n')
    with pytest.raises(StructuralError) as e:
        scan_file(path, COLS, 4)
    assert e.value.line == 3 and "quote inside an unquoted field at character 7" in str(e.value)
    # Two stray quotes balance the count: pass 2 finds the first one.
    path = _write(tmp_path, b'a,b,c\n1,x,y\n2,5\'10" tall,z\n3,x"y,w\n')
    fscan = scan_file(path, COLS, 1 << 20)
    buf = path.read_bytes()[fscan.batches[0].start:]
    with pytest.raises(StructuralError) as e:
        index_records(buf, fscan.batches[0].first_line, path)
    assert e.value.line == 3 and "quote inside an unquoted field at character 7" in str(e.value)


def test_text_after_a_closing_quote_is_a_structural_error(tmp_path):
    path = _write(tmp_path, b'a,b,c\n1,"x"y,z\n')
    buf = path.read_bytes()[6:]
    with pytest.raises(StructuralError, match="after the closing quote"):
        index_records(buf, 2, path)


def test_unterminated_quote_names_the_line_where_it_opened(tmp_path):
    path = _write(tmp_path, b'a,b,c\n1,x,y\n2,"open\nmore\n3,x,y\n')
    with pytest.raises(StructuralError) as e:
        scan_file(path, COLS, 3)
    assert e.value.line == 3 and "unterminated" in str(e.value)


@pytest.mark.parametrize("data,message", [
    (b"", "empty"),
    (b"\n\n", "empty"),
    (b"a,b\n1,2\n", "missing column(s) c"),
    (b"a,b,c,d\n", "unknown column(s) 'd'"),
    (b"a,b,c,a\n", "repeated column(s) a"),
])
def test_header_problems(tmp_path, data, message):
    with pytest.raises(StructuralError, match=message.replace("(", r"\(").replace(")", r"\)")) as e:
        read_header(_write(tmp_path, data), COLS)
    assert e.value.line == 1


def test_header_with_bom_and_crlf(tmp_path):
    header = read_header(_write(tmp_path, b"\xef\xbb\xbfc,a,b\r\n1,2,3\r\n"), COLS)
    assert header.names == ("c", "a", "b") and header.data_start == 10 and header.data_line == 2


@pytest.mark.parametrize("seed", range(12))
def test_field_counts_agree_with_pythons_csv_reader(tmp_path, seed):
    """Both ways of counting fields (few quotes: all commas less the quoted ones; quotes everywhere:
    comma by comma) against the standard library's reader, on random records."""
    import csv
    import io
    import random

    rng = random.Random(seed)
    everywhere = seed % 2  # quote every field, or only those that need it
    pieces = ["", "x", "a,b", 'say "hi"', "two\nlines", "cr\r\nlf", ",", '""', "café, ✓"]

    def cell(v: str) -> str:
        if everywhere or any(c in v for c in ',"\r\n') or (v == "" and rng.random() < 0.5):
            return '"' + v.replace('"', '""') + '"'
        return v

    lines = []
    for _ in range(rng.randint(1, 300)):
        if rng.random() < 0.05:
            lines.append("")  # a blank line
            continue
        # where quotes are few, most fields are plain words
        lines.append(",".join(cell(rng.choice(pieces) if everywhere or rng.random() < 0.1 else "w")
                              for _ in range(rng.randint(1, 6))))
    body = "\n".join(lines) + rng.choice(["", "\n"])
    expected = [len(row) for row in csv.reader(io.StringIO(body, newline="")) if row]
    buf = body.encode()
    idx = index_records(buf, 2, tmp_path / "t.csv")
    assert [int(f) for f, blank in zip(idx.fields, idx.blank) if not blank] == expected


def test_a_streamed_scan_hands_out_the_whole_scans_batches_and_finishes_after_a_partial_read(tmp_path):
    from cutover.csvscan import ScanStream

    path = _write(tmp_path, b"a,b,c\n" + b"".join(b'%d,"x\n%d",z\n' % (i, i) for i in range(200)))
    whole = scan_file(path, COLS, 64)
    stream = ScanStream.start(path, COLS, 64)
    assert stream.header == whole.header and stream.size == whole.size
    first = [b for b, _ in zip(stream.batches(), range(3))]  # a consumer that gives up after three
    assert first == list(whole.batches[:3])
    assert stream.finish() == whole and len(whole.batches) > 10
    assert list(stream.batches()) == list(whole.batches)  # a second pass, from the first batch
    assert list(ScanStream.start(path, COLS, 64).batches()) == list(whole.batches)
    replayed = ScanStream.of(whole)
    assert list(replayed.batches()) == list(whole.batches) and replayed.finish() == whole


def test_a_streamed_scan_raises_late_errors_through_its_mapper_after_yielding_batches(tmp_path):
    from dataclasses import replace

    from cutover.csvscan import ScanStream

    path = _write(tmp_path, b"a,b,c\n" + b"1,x,y\n" * 100 + b'2,"open\n3,x,y\n')
    stream = ScanStream.start(path, COLS, 64, name_errors=lambda exc: replace(exc, path=tmp_path / "named.csv"))
    seen = []
    with pytest.raises(StructuralError) as e:
        seen.extend(stream.batches())
    assert len(seen) > 5 and e.value.line == 102 and "named.csv" in str(e.value)
    with pytest.raises(StructuralError, match="named.csv"):  # the same error again, not a half scan
        stream.finish()
