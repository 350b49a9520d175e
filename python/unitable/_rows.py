"""Rows in and out: Python values as the changelog's JSON mapping, Arrow IPC both ways, pandas.

Lists of dicts go as JSON lines (docs/changelog-format.md), so the server validates each row and
names the row and field it rejects. Arrow tables and batches go as Arrow IPC streams; the server
converts each column to the table's type when nothing is lost. pandas DataFrames go through
Arrow.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import json
import math
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Union

import pyarrow as pa

from ._errors import InvalidArgument
from ._types import RowValues

if TYPE_CHECKING:
    import pandas

    from ._types import TableInfo

#: What ``write`` accepts: a pyarrow Table or RecordBatch, a pandas DataFrame or dicts (column
#: name -> value).
Rows = Union[pa.Table, pa.RecordBatch, "pandas.DataFrame", Iterable[Mapping[str, Any]]]
#: What ``lookup`` accepts: as ``Rows`` (key columns), or plain values of a one-column key.
Keys = Union[pa.Table, pa.RecordBatch, "pandas.DataFrame", Iterable[Any]]


def is_dataframe(data: object) -> bool:
    """Whether `data` is a pandas DataFrame (without importing pandas when it is not loaded)."""
    import sys

    pandas = sys.modules.get("pandas")
    return pandas is not None and isinstance(data, pandas.DataFrame)


def json_value(value: Any) -> Any:
    """A Python value as the changelog's JSON mapping (docs/changelog-format.md); raises
    TypeError for a value with no mapping."""
    if value is None or isinstance(value, (bool, str, int)):
        return value
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return value
    if isinstance(value, decimal.Decimal):
        if not value.is_finite():
            raise TypeError(f"decimal {value} is not a number a column can hold")
        return format(value, "f")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            return value.isoformat(timespec="microseconds")
        utc = value.astimezone(dt.timezone.utc).replace(tzinfo=None)
        return utc.isoformat(timespec="microseconds") + "Z"
    if isinstance(value, dt.date):
        return value.isoformat()
    # numpy scalars (from pandas) without importing numpy.
    item = getattr(value, "item", None)
    if callable(item) and type(value).__module__ == "numpy":
        return json_value(item())
    raise TypeError(f"a value of type {type(value).__name__} has no unitable column type")


def json_lines(table: str, rows: Iterable[Any], first_row: int = 0) -> bytes:
    """Rows (mappings) as JSON lines; a row that is not a mapping, or a value with no JSON
    mapping, raises InvalidArgument naming the row and field."""
    out: list[str] = []
    for i, row in enumerate(rows, start=first_row):
        if not isinstance(row, Mapping):
            raise InvalidArgument(
                f"write to {table}: row {i} is a {type(row).__name__}, not a dict of column "
                "name -> value", table=table, row=i)
        obj: dict[str, Any] = {}
        for name, value in row.items():
            try:
                obj[str(name)] = json_value(value)
            except TypeError as e:
                raise InvalidArgument(
                    f"{table}: row {i}, field `{name}`: {e}", table=table, field=str(name),
                    row=i) from None
        out.append(json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False))
    return ("\n".join(out) + "\n").encode() if out else b""


def ipc_bytes(data: pa.Table | pa.RecordBatch) -> bytes:
    """An Arrow IPC stream (schema, batches, end-of-stream marker)."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, data.schema) as writer:
        if isinstance(data, pa.RecordBatch):
            writer.write_batch(data)
        else:
            writer.write_table(data)
    return bytes(sink.getvalue().to_pybytes())


# Decoded lookup schemas by their IPC bytes (equal schemas come as equal bytes): names, the
# value converters and the schema.
_SCHEMAS: dict[bytes, tuple[list[str], list[tuple[int, Any]], pa.Schema]] = {}
_EPOCH_ORDINAL = dt.date(1970, 1, 1).toordinal()


def _converter(t: pa.DataType) -> Any:
    """The function turning a ``json_rows`` value of type `t` into what Arrow's ``to_pylist``
    gives (``None``: the JSON value already is that)."""
    if pa.types.is_decimal(t):
        return decimal.Decimal
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return base64.b64decode
    if pa.types.is_date32(t):
        return lambda days: dt.date.fromordinal(_EPOCH_ORDINAL + days)
    if pa.types.is_timestamp(t):
        # The epoch as pyarrow itself gives it for this type (naive, or with its tzinfo).
        epoch = pa.scalar(0, type=t).as_py()
        return lambda micros: epoch + dt.timedelta(microseconds=micros)
    return None


def _lookup_schema(schema_ipc: bytes) -> tuple[list[str], list[tuple[int, Any]], pa.Schema]:
    known = _SCHEMAS.get(schema_ipc)
    if known is None:
        schema = pa.ipc.open_stream(schema_ipc).schema
        converters = [(i, c) for i, f in enumerate(schema) if (c := _converter(f.type))]
        known = ([f.name for f in schema], converters, schema)
        if len(_SCHEMAS) >= 256:
            _SCHEMAS.clear()
        _SCHEMAS[schema_ipc] = known
    return known


def json_rows(schema_ipc: bytes, payload: bytes) -> RowValues:
    """A lookup's rows sent as JSON arrays (``LookupResult.json_rows``), as the values Arrow's
    ``to_pylist`` would give for them; `schema_ipc` is the answer's schema as Arrow IPC."""
    names, converters, schema = _lookup_schema(schema_ipc)
    values: list[list[Any]] = json.loads(payload)
    if converters:
        for row in values:
            for i, convert in converters:
                v = row[i]
                if v is not None:
                    row[i] = convert(v)
    return RowValues(schema, names, values)


def read_ipc(payload: bytes) -> pa.Table:
    """An Arrow IPC stream as a table."""
    return pa.ipc.open_stream(payload).read_all()


def concat(schema: pa.Schema | None, tables: list[pa.Table]) -> pa.Table:
    """Tables of one read as one table (an empty result keeps the schema)."""
    if not tables:
        return (schema or pa.schema([])).empty_table()
    if len(tables) == 1:
        return tables[0]
    return pa.concat_tables(tables)


def from_pandas(table: str, df: pandas.DataFrame, info: TableInfo | None) -> pa.Table:
    """A DataFrame as Arrow, column by column, so an error names its column.

    pandas holds integer columns with missing values as floats; a float column that the table
    stores as an integer is converted back (NaN -> null; a fraction is an error naming the
    column). Everything else goes as pandas' own Arrow conversion, and the server converts it to
    the table's types.
    """
    arrays: list[pa.Array] = []
    names: list[str] = []
    for name in df.columns:
        series = df[name]
        column = info.column(str(name)) if info is not None else None
        try:
            array = pa.array(series, from_pandas=True)
            if (column is not None and column.type in ("int32", "int64")
                    and pa.types.is_floating(array.type)):
                array = pa.array(series, type=column.arrow_type, from_pandas=True, safe=True)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as e:
            raise InvalidArgument(
                f"write to {table}: column `{name}` of the DataFrame cannot be converted to "
                f"Arrow: {e}", table=table, field=str(name)) from None
        arrays.append(array)
        names.append(str(name))
    return pa.Table.from_arrays(arrays, names=names)


def slices(data: pa.Table, max_rows: int, max_bytes: int) -> Iterator[tuple[int, pa.Table]]:
    """(first row, slice) pieces of `data` of at most `max_rows` rows and about `max_bytes`."""
    n = data.num_rows
    if n == 0:
        return
    per_row = max(1, data.nbytes // n)
    step = max(1, min(max_rows, max_bytes // per_row))
    for start in range(0, n, step):
        yield start, data.slice(start, step)
