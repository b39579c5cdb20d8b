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
    path: Path, columns: list[str] | None, text_columns: tuple[str, ...] = (), tickers: tuple | None = None
) -> tuple[pd.DataFrame, list[str], np.ndarray | None]:
    """The named columns (all if None) of a Parquet file or folder, text columns as Categoricals;
    the file's column names; the rows' positions in the file (None: all rows, in order).

    `tickers`: (column, names) reads only rows whose column, as stripped text, is one of `names`
    (a hive folder by ticker then opens only those tickers' files)."""
    data = dataset(path)
    names = data.schema.names
    wanted = names if columns is None else [c for c in dict.fromkeys(columns) if c in names]
    row_filter, positions = None, None
    if tickers is not None and tickers[0] in names:
        column, keep = tickers
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
        row_filter = pc.field(column).isin(distinct.filter(selected(distinct)))
    read = lambda name: data.to_table(columns=[name], filter=row_filter).column(0)  # noqa: E731
    if row_filter is not None and path.is_file():
        # One file: read only the row groups holding chosen rows, then take those rows (a file sorted
        # by ticker puts each rank's tickers in its own row groups; a filter would decode every one).
        read = row_groups(pq.ParquetFile(str(path)), positions)
    # One column at a time: Arrow's decoding buffers for one column, not for the whole file, exist at
    # once next to the frame (Arrow's allocator keeps freed memory for reuse, so they set the peak).
    series = {}
    for name in wanted:
        column = read(name)
        if name in text_columns and not pa.types.is_dictionary(column.type):
            column = pc.dictionary_encode(column)
        series[name] = column.to_pandas()
        del column
        release()  # this column's decoding buffers, before the next column's
    frame = pd.DataFrame(series, copy=False)
    release()
    return frame, list(names), positions


def row_groups(file: pq.ParquetFile, positions: np.ndarray):
    """A reader of column `name` at rows `positions` (sorted) of `file`: only the row groups holding
    them are decoded."""
    sizes = np.array([file.metadata.row_group(i).num_rows for i in range(file.num_row_groups)], dtype=np.int64)
    offsets = np.r_[0, np.cumsum(sizes)]
    group = np.searchsorted(offsets, positions, side="right") - 1
    groups = np.unique(group)
    first = np.r_[0, np.cumsum(sizes[groups])][np.searchsorted(groups, group)]  # each group's first row, as read
    take = pa.array(positions - offsets[group] + first, type=pa.int64())

    def read(name: str):
        return file.read_row_groups(groups.tolist(), columns=[name]).column(0).take(take)

    return read


def release() -> None:
    """Hand memory Arrow keeps cached for reuse back to the system (the file's columns, once freed,
    would otherwise stay resident for the whole run)."""
    pa.default_memory_pool().release_unused()


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
