"""Where the rows come from: a Parquet file, a folder of Parquet files, or a CSV cached as Parquet.

Parquet (a file, a folder of files, or a hive-partitioned folder such as `ticker=AAA/part-0.parquet`)
is read through a pyarrow dataset with column projection: only the columns the config names are
read, and the ticker column arrives dictionary-encoded (a pandas Categorical: one small integer per
row, not one Python string per row). `tickers` filters in Arrow, before any pandas frame exists.

A CSV is parsed once and written as Parquet into `cache_dir`, named by the CSV's path, size and
modification time (and which columns are read as text): a second run reads the cache and skips the
parse. The cache is written under a temporary name and only kept once the caller says the rows passed
validation (`commit()`), so a refused run leaves nothing behind. Editing the CSV changes its size or
mtime, hence the name: a stale cache is never read (old ones stay until you delete `cache_dir`).
"""

import ctypes
import hashlib
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

PARQUET_SUFFIXES = {".parquet", ".pq"}


def parquet_files(folder: Path) -> bool:
    return any(p.suffix.lower() in PARQUET_SUFFIXES for p in folder.rglob("*") if p.is_file())


def dataset(path: Path) -> ds.Dataset:
    """A Parquet file or folder as one dataset; a folder's `key=value` levels become columns."""
    return ds.dataset(str(path), format="parquet", partitioning="hive" if path.is_dir() else None)


def read_parquet(
    path: Path,
    columns: list[str] | None,
    text_columns: tuple[str, ...] = (),
    tickers: tuple | None = None,
    narrow: tuple[str, ...] = (),
) -> tuple[pd.DataFrame, list[str], np.ndarray | None]:
    """The named columns (all if None) of a Parquet file or folder, text columns as Categoricals;
    the file's column names; the rows' positions in the file (None: all rows, in order).

    `tickers`: (column, names) reads only rows whose column, as stripped text, is one of `names`
    (a hive folder by ticker then opens only those tickers' files). `narrow`: float64 columns to
    hand over as float32 (half the memory), unless a finite value is beyond float32's range."""
    # Arrow's default allocator (mimalloc) keeps freed column buffers for reuse: a quarter of the
    # peak at 20M rows. The system allocator gives file-sized buffers back as soon as they are freed.
    default = pa.default_memory_pool()
    pa.set_memory_pool(pa.system_memory_pool())
    try:
        return _read_parquet(path, columns, text_columns, tickers, narrow)
    finally:
        pa.set_memory_pool(default)


def _read_parquet(path, columns, text_columns, tickers, narrow):
    data = dataset(path)
    names = data.schema.names
    wanted = names if columns is None else [c for c in dict.fromkeys(columns) if c in names]
    row_filter, positions = None, None
    if tickers is not None and tickers[0] in names:
        row_filter, positions = select(data, *tickers)
        release()  # the whole file's ticker column, read to choose the rows
    if path.is_file():
        # One file: a row group at a time, and only those holding chosen rows (a file sorted by ticker
        # puts each rank's tickers in their own row groups; a filter would decode every one).
        parts = RowGroups(pq.ParquetFile(str(path)), positions)
    else:
        parts = Batches(data, row_filter)
    total = len(positions) if positions is not None else data.count_rows()
    # One column at a time; float and time columns are copied a row group (or batch) at a time into
    # one NumPy array, so Arrow's decoding buffers for a whole column never exist next to it.
    series = {}
    for name in wanted:
        kind = data.schema.field(name).type
        values = None
        if pa.types.is_floating(kind) or (pa.types.is_timestamp(kind) and kind.tz is None):
            values = fill(parts.chunks(name), total, name in narrow and pa.types.is_float64(kind))
        if values is not None:
            series[name] = pd.Series(values, copy=False)
        else:  # text, integers, zoned times, or too big for float32: Arrow's conversion of the whole column
            column = parts.column(name)
            if name in text_columns and not pa.types.is_dictionary(column.type):
                column = pc.dictionary_encode(column)
            series[name] = column.to_pandas()
            del column
        release()  # this column's decoding buffers, before the next column's
    frame = pd.DataFrame(series, copy=False)
    release()
    return frame, list(names), positions


def select(data: ds.Dataset, column: str, keep) -> tuple:
    """(filter, positions): the rows whose `column`, as stripped text, is one of `keep`, as an Arrow
    filter and as sorted positions in the dataset (int32 below 2**31 rows)."""
    keep = pa.array(sorted({str(t).strip() for t in keep}), pa.string())
    tickers = data.to_table(columns=[column]).column(0).combine_chunks()

    def selected(values):
        return pc.is_in(pc.utf8_trim_whitespace(pc.cast(values, pa.string())), keep)

    # Positions in the file, for messages ("row 8"); the filter names the file's own values.
    # A dictionary-encoded column is judged once per distinct value, not once per row.
    if pa.types.is_dictionary(tickers.type):
        chosen = selected(tickers.dictionary).fill_null(False).to_numpy(zero_copy_only=False)
        codes = tickers.indices.fill_null(-1).to_numpy(zero_copy_only=False)
        positions = np.flatnonzero(np.r_[chosen, False][codes])  # -1 (a null name): never chosen
        distinct = pc.unique(tickers.dictionary).drop_null()
    else:
        positions = np.flatnonzero(selected(tickers).fill_null(False).to_numpy(zero_copy_only=False))
        distinct = pc.unique(tickers).drop_null()
    if len(tickers) < 2**31:
        positions = positions.astype(np.int32)
    return pc.field(column).isin(distinct.filter(selected(distinct))), positions


FLOAT32_MAX = float(np.finfo(np.float32).max)


def fill(chunks, total: int, float32: bool) -> np.ndarray | None:
    """The column whose pieces `chunks` yields (Arrow arrays, each with the indices of the rows to
    keep or None) as one NumPy array of `total` rows; nulls as NaN / NaT. `float32`: float64 values
    stored as float32 (None if a finite value would overflow: NaN and infinities stay what they are,
    missing values for the checks)."""
    out, a = None, 0
    for chunk, keep in chunks:
        values = chunk.to_numpy(zero_copy_only=False)
        if keep is not None:
            values = values[keep]
        if float32 and (np.abs(values[np.isfinite(values)]) > FLOAT32_MAX).any():
            return None
        if out is None:
            out = np.empty(total, dtype=np.float32 if float32 else values.dtype)
        out[a : a + len(values)] = values
        a += len(values)
    if out is None or a != total:
        return None  # nothing read, or not the rows counted: Arrow's own conversion decides
    return out


class Batches:
    """A column of a dataset (a folder, with an optional row filter): as pieces of one row group
    each, in the dataset's order, or as one column."""

    def __init__(self, data: ds.Dataset, row_filter):
        self.data, self.row_filter = data, row_filter

    def chunks(self, name: str):
        for fragment in self.data.get_fragments(filter=self.row_filter):
            for piece in fragment.split_by_row_group(filter=self.row_filter, schema=self.data.schema):
                table = piece.to_table(schema=self.data.schema, columns=[name], filter=self.row_filter)
                yield table.column(0), None

    def column(self, name: str) -> pa.ChunkedArray:
        return self.data.to_table(columns=[name], filter=self.row_filter).column(0)


class RowGroups:
    """A column of `file` at rows `positions` (sorted; None: every row), a row group at a time:
    only the row groups holding them are decoded."""

    def __init__(self, file: pq.ParquetFile, positions: np.ndarray | None):
        sizes = [file.metadata.row_group(i).num_rows for i in range(file.num_row_groups)]
        self.file, self.offsets = file, np.r_[0, np.cumsum(sizes, dtype=np.int64)]
        self.positions, self.every = positions, positions is None
        # positions[bounds[g]:bounds[g + 1]] lie in group g
        bounds = self.offsets if self.every else np.searchsorted(positions, self.offsets)
        self.groups = [(g, int(bounds[g]), int(bounds[g + 1])) for g in range(len(sizes)) if bounds[g + 1] > bounds[g]]

    def chunks(self, name: str):
        for g, lo, hi in self.groups:
            keep = None
            if not self.every:
                local = self.positions[lo:hi] - self.offsets[g]
                whole = local[-1] - local[0] + 1 == len(local)  # one run of rows: a slice, no gather
                keep = slice(int(local[0]), int(local[-1]) + 1) if whole else local
            yield self.file.read_row_group(g, columns=[name]).column(0), keep

    def column(self, name: str) -> pa.ChunkedArray:
        if self.every:
            return self.file.read(columns=[name]).column(0)
        groups = [g for g, _, _ in self.groups]
        starts = np.r_[0, np.cumsum(np.diff(self.offsets)[groups])]  # each chosen group's first row, as read
        take = np.concatenate(
            [self.positions[lo:hi] - self.offsets[g] + starts[k] for k, (g, lo, hi) in enumerate(self.groups)]
        )
        return self.file.read_row_groups(groups, columns=[name]).column(0).take(pa.array(take, type=pa.int64()))


def release() -> None:
    """Hand memory Arrow keeps cached for reuse back to the system (the file's columns, once freed,
    would otherwise stay resident for the whole run), and so does glibc's malloc: block-sized
    temporaries (below its mmap threshold) leave freed pages in its heap, resident and too
    fragmented for the next file-sized array."""
    pa.default_memory_pool().release_unused()
    if _malloc_trim is not None:
        _malloc_trim(0)


def _libc_trim():
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim  # glibc only
    except (OSError, AttributeError):
        return None


_malloc_trim = _libc_trim()


def cache_path(path: Path, cache_dir: Path, text_columns: tuple[str, ...]) -> Path:
    """Cache file of CSV `path`: changes whenever the CSV's size or mtime (or the text columns) do."""
    info = path.stat()
    key = f"{path.resolve()}|{info.st_size}|{info.st_mtime_ns}|{','.join(text_columns)}"
    return cache_dir / f"{path.stem}-{hashlib.sha1(key.encode()).hexdigest()[:16]}.parquet"


class CsvCache:
    """Write a parsed CSV to `target` under a temporary name; `commit()` keeps it, `discard()` drops it."""

    def __init__(self, frame: pd.DataFrame, target: Path):
        self.target = target
        self.partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
        # Folders this creates, removed again by discard(): a refused run leaves the log dir as it was.
        self.created = [p for p in (target.parent, *target.parent.parents) if not p.exists()]
        target.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), self.partial)

    def commit(self) -> None:
        os.replace(self.partial, self.target)  # atomic: another rank never sees half a file

    def discard(self) -> None:
        self.partial.unlink(missing_ok=True)
        for folder in self.created:  # innermost first
            try:
                folder.rmdir()
            except OSError:
                break
