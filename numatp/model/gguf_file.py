"""A GGUF file opened over mmap: metadata as plain Python values, tensors as zero-copy
views of their raw block bytes.

The header is parsed here rather than with gguf.GGUFReader: the reader builds an object
per array element and took 16 s to open a 150k-token vocabulary on these machines, while
start-up has a 3 s budget. The gguf package still provides the type tables, and the tests
write their models with gguf.GGUFWriter and check kernels with gguf.quants.

Every read is bounds-checked against the file size before anything is allocated from a
count the file gave, so a truncated or corrupt file ends in one ModelFileError naming the
file and the problem. What a reader of the data would trip over later is refused here
too: a key or tensor name given twice, arrays nested deeper than MAX_ARRAY_DEPTH (which
would overflow Python's stack in every reader of the value), tensor data that is not
aligned or that overlaps another tensor's (llama.cpp's reader refuses duplicate names,
and any tensor data not packed in order).

A model split with llama.cpp's gguf-split (`NAME-00001-of-00003.gguf`, ...) opens as one
file: open the first split, and `tensors` holds the tensors of every split, each a view of
its own file. Every split is a whole GGUF file whose header lists only its own tensors;
the keys split.no (0 for the first), split.count and split.tensors.count say where it
belongs, and the first split holds the model's metadata.
"""
import mmap
import os
import re
import stat
import struct
import weakref
from dataclasses import dataclass

import numpy as np

from numatp.errors import ModelFileError
from numatp.quant import formats

GGUF_MAGIC = b"GGUF"
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_ARRAY_DEPTH = 8  # no model file nests arrays at all; gguf-py could write deeper

# GGUF metadata value types -> (struct code, size) for the scalar ones.
_SCALARS = {0: ("<B", 1), 1: ("<b", 1), 2: ("<H", 2), 3: ("<h", 2), 4: ("<I", 4), 5: ("<i", 4),
            6: ("<f", 4), 7: ("<?", 1), 10: ("<Q", 8), 11: ("<q", 8), 12: ("<d", 8)}
_NUMPY = {0: np.uint8, 1: np.int8, 2: np.uint16, 3: np.int16, 4: np.uint32, 5: np.int32,
          6: np.float32, 7: np.bool_, 10: np.uint64, 11: np.int64, 12: np.float64}
STRING, ARRAY = 8, 9
_U64 = struct.Struct("<Q")

SPLIT_NO, SPLIT_COUNT, SPLIT_TENSORS = "split.no", "split.count", "split.tensors.count"
# llama.cpp's names for the splits of one model: PREFIX-00001-of-00003.gguf and so on.
SPLIT_NAME = re.compile(r"^(?P<prefix>.+)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")


def split_path(prefix: str, index: int, count: int) -> str:
    """The path of split `index` (0-based) of `count` whose names start with `prefix`."""
    return f"{prefix}-{index + 1:05d}-of-{count:05d}.gguf"


@dataclass
class TensorInfo:
    name: str
    qtype: int
    shape: tuple        # row-major: (rows, cols) for a matrix (GGUF lists dims reversed)
    offset: int         # absolute byte offset in the file
    nbytes: int
    data: np.ndarray    # uint8 view into the mmap, nbytes long

    @property
    def rows(self) -> int:
        return int(np.prod(self.shape[:-1])) if len(self.shape) > 1 else 1

    @property
    def cols(self) -> int:
        return self.shape[-1]


class _Cursor:
    """Reads little-endian values from the header, failing cleanly at the end of file."""

    def __init__(self, buf, path):
        self.buf, self.pos, self.path, self.size = buf, 0, path, len(buf)

    def need(self, n, what):
        if n < 0 or self.pos + n > self.size:
            raise ModelFileError(f"{self.path}: truncated or corrupt GGUF file ({what} at byte "
                                 f"{self.pos} needs {n} bytes; the file has {self.size})")

    def scalar(self, vtype, what):
        code, size = _SCALARS[vtype]
        self.need(size, what)
        value = struct.unpack_from(code, self.buf, self.pos)[0]
        self.pos += size
        return value

    def u32(self, what):
        return self.scalar(4, what)

    def u64(self, what):
        return self.scalar(10, what)

    def string(self, what):
        return self.strings(1, what)[0]

    def strings(self, count, what, keep=True):
        """`count` length-prefixed UTF-8 strings in a row, in one loop with its state in
        locals: a vocabulary has 150k of them and every start-up parses it. With
        keep=False they are stepped over, bounds-checked alike, and None is returned."""
        self.need(count * 8, what)  # each string has an 8-byte length
        buf, pos, size, unpack = self.buf, self.pos, self.size, _U64.unpack_from
        out = [] if keep else None
        for _ in range(count):
            if pos + 8 > size:
                self.pos = pos
                self.need(8, what)
            n = unpack(buf, pos)[0]
            pos += 8
            if pos + n > size:
                self.pos = pos
                self.need(n, what)
            if keep:
                out.append(str(buf[pos:pos + n], "utf-8", "replace"))
            pos += n
        self.pos = pos
        return out

    def value(self, vtype, key, depth=0, skip=False):
        """The value of `key`; with `skip`, an array is stepped over (checked, not built)
        and None returned."""
        if vtype in _SCALARS:
            return self.scalar(vtype, f"value of {key}")
        if vtype == STRING:
            return self.string(f"value of {key}")
        if vtype == ARRAY:
            etype = self.u32(f"array type of {key}")
            count = self.u64(f"array length of {key}")
            if etype in _NUMPY:
                size = _SCALARS[etype][1]
                self.need(count * size, f"array {key}")
                if skip:
                    self.pos += count * size
                    return None
                arr = np.frombuffer(self.buf, dtype=_NUMPY[etype], count=count, offset=self.pos)
                self.pos += count * size
                return arr.tolist()
            if etype == STRING:
                return self.strings(count, f"array {key}", keep=not skip)
            if etype == ARRAY:
                if depth + 1 >= MAX_ARRAY_DEPTH:
                    raise ModelFileError(f"{self.path}: corrupt metadata: {key} has arrays nested "
                                         f"more than {MAX_ARRAY_DEPTH} deep")
                self.need(count * 12, f"array {key}")
                items = [self.value(ARRAY, key, depth + 1, skip) for _ in range(count)]
                return None if skip else items
            raise ModelFileError(f"{self.path}: corrupt metadata: array {key} has unknown "
                                 f"element type {etype}")
        raise ModelFileError(f"{self.path}: corrupt metadata: {key} has unknown type {vtype}")


class GGUFFile:
    """An open GGUF file. `metadata` maps keys to Python values; `tensors` maps names to
    TensorInfo whose `data` is a view into the file's mmap (nothing is copied). For a split
    model, `path` is the first split's, `tensors` those of all splits and `file_size`
    their total (see the module docstring)."""

    def __init__(self, path, _split=None, tokenizer=True):
        """`_split`: (index, count) when opening a split other than the first, as part of
        the model its first split describes. `tokenizer` False leaves the tokenizer's
        arrays (tokenizer.ggml.*: a vocabulary's tokens, scores and merges, tens of MB as
        Python objects) out of `metadata`, checked but not read: a worker process, which
        needs the tensors and the model's shape only, then does not hold them."""
        self.path = str(path)
        self._tokenizer = tokenizer
        self._parts = []   # the other splits' GGUFFiles, when this is a first split
        # stat first: opening a FIFO or a device for reading could block forever.
        try:
            mode = os.stat(self.path).st_mode
        except FileNotFoundError:
            raise ModelFileError(f"{self.path}: no such file") from None
        except OSError as e:
            raise ModelFileError(f"{self.path}: cannot read: {e.strerror}") from None
        if stat.S_ISDIR(mode):
            raise ModelFileError(f"{self.path}: is a directory, not a GGUF file")
        if not stat.S_ISREG(mode):
            raise ModelFileError(f"{self.path}: not a regular file, so not a GGUF file")
        try:
            with open(self.path, "rb") as f:
                self.file_size = os.fstat(f.fileno()).st_size
                if self.file_size < 24:
                    raise ModelFileError(f"{self.path}: not a GGUF file (only {self.file_size} bytes)")
                self._mmap = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
                # Kept for read_rows: the file as opened, even if its path is replaced later.
                fd = os.dup(f.fileno())
                self._close_fd = weakref.finalize(self, os.close, fd)
                self._fd = fd
        except OSError as e:
            raise ModelFileError(f"{self.path}: cannot read: {e.strerror}") from None
        self._bytes = np.frombuffer(self._mmap, dtype=np.uint8)
        self.metadata, tensor_headers, data_start = self._parse_header()
        self.data_start = data_start
        self.tensors = {}
        for name, dims, qtype, rel in tensor_headers:
            if rel % self.alignment:
                raise ModelFileError(f"{self.path}: tensor {name}: its data offset {rel} is not a "
                                     f"multiple of the file's alignment ({self.alignment})")
            self.tensors[name] = self._tensor_info(name, dims, qtype, data_start + rel)
        self._check_no_overlap()
        try:
            self._join_splits(_split)
        except BaseException:
            self.close()
            raise

    def _split_key(self, key):
        value = self.metadata.get(key)
        if value is not None and (type(value) is not int or value < 0):
            raise ModelFileError(f"{self.path}: corrupt split metadata: {key} is {describe(value)}")
        return value

    def _join_splits(self, expected):
        count = self._split_key(SPLIT_COUNT)
        index = self._split_key(SPLIT_NO)
        if expected is not None:
            want_index, want_count = expected
            if count != want_count or index != want_index:
                raise ModelFileError(
                    f"{self.path}: expected split {want_index + 1} of {want_count}, but the file "
                    f"says split {_ordinal(index)} of {count if count is not None else 'none'}")
            return
        if count is None or count <= 1:
            return
        if index is None:
            raise ModelFileError(f"{self.path}: a split model (split.count {count}) without split.no")
        name = SPLIT_NAME.match(self.path)
        if index != 0:
            first = f": open {split_path(name['prefix'], 0, count)}" if name else ""
            raise ModelFileError(f"{self.path}: this is split {index + 1} of {count} of a model; "
                                 f"a split model is opened by its first split{first}")
        if name is None or int(name["count"]) != count or int(name["no"]) != 1:
            raise ModelFileError(f"{self.path}: the first of {count} splits, but its name does not end "
                                 f"in -00001-of-{count:05d}.gguf, so the other splits cannot be found")
        for i in range(1, count):
            path = split_path(name["prefix"], i, count)
            if not os.path.exists(path):
                raise ModelFileError(f"{self.path}: split {i + 1} of {count} is missing ({path})")
            part = GGUFFile(path, _split=(i, count), tokenizer=self._tokenizer)
            self._parts.append(part)
            for tname, info in part.tensors.items():
                if tname in self.tensors:
                    raise ModelFileError(f"{part.path}: corrupt split model: tensor {tname} is also "
                                         "in an earlier split")
                self.tensors[tname] = info
        self.file_size += sum(p.file_size for p in self._parts)
        total = self._split_key(SPLIT_TENSORS)
        if total is not None and total != len(self.tensors):
            raise ModelFileError(f"{self.path}: split.tensors.count says {total} tensors, but the "
                                 f"{count} splits hold {len(self.tensors)}")

    def _parse_header(self):
        c = _Cursor(self._mmap, self.path)
        if bytes(self._mmap[:4]) != GGUF_MAGIC:
            raise ModelFileError(f"{self.path}: not a GGUF file (bad magic {bytes(self._mmap[:4])!r})")
        c.pos = 4
        version = c.u32("version")
        if version not in (2, 3):
            raise ModelFileError(f"{self.path}: unsupported GGUF version {version} (supported: 2, 3)")
        n_tensors = c.u64("tensor count")
        n_kv = c.u64("metadata count")
        # Each key-value pair takes at least 12 header bytes, each tensor info at least 28.
        if 12 * n_kv + 28 * n_tensors > self.file_size:
            raise ModelFileError(f"{self.path}: truncated or corrupt header (claims {n_tensors} tensors and "
                                 f"{n_kv} metadata entries in a {self.file_size}-byte file)")
        metadata, skipped = {}, set()
        for _ in range(n_kv):
            key = c.string("metadata key")
            if key in metadata or key in skipped:
                raise ModelFileError(f"{self.path}: corrupt metadata: key {key} appears twice")
            vtype = c.u32(f"type of {key}")
            skip = not self._tokenizer and key.startswith("tokenizer.ggml.")
            value = c.value(vtype, key, skip=skip)
            if skip and value is None:
                skipped.add(key)
            else:
                metadata[key] = value
        headers, names = [], set()
        for _ in range(n_tensors):
            name = c.string("tensor name")
            if name in names:
                raise ModelFileError(f"{self.path}: corrupt file: two tensors are named {name}")
            names.add(name)
            n_dims = c.u32(f"dimension count of {name}")
            if not 1 <= n_dims <= MAX_DIMS:
                raise ModelFileError(f"{self.path}: tensor {name} has {n_dims} dimensions "
                                     f"(1..{MAX_DIMS} allowed)")
            dims = [c.u64(f"dimensions of {name}") for _ in range(n_dims)]
            qtype = c.u32(f"type of {name}")
            rel = c.u64(f"offset of {name}")
            headers.append((name, dims, qtype, rel))
        alignment = metadata.get("general.alignment", 32)
        if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
            raise ModelFileError(f"{self.path}: bad general.alignment {alignment!r}")
        self.alignment = alignment
        data_start = -(-c.pos // alignment) * alignment
        return metadata, headers, data_start

    def _check_no_overlap(self):
        by_offset = sorted(self.tensors.values(), key=lambda t: t.offset)
        for a, b in zip(by_offset, by_offset[1:]):
            if a.offset + a.nbytes > b.offset:
                raise ModelFileError(f"{self.path}: corrupt file: the data of tensors {a.name} and "
                                     f"{b.name} overlap (bytes {a.offset}..{a.offset + a.nbytes} and "
                                     f"{b.offset}..)")

    def _tensor_info(self, name, dims, qtype, offset) -> TensorInfo:
        if any(d <= 0 or d > 1 << 40 for d in dims):
            raise ModelFileError(f"{self.path}: tensor {name} has bad dimensions {dims}")
        try:
            bs, bb = formats.block_size(qtype), formats.block_bytes(qtype)
        except (ValueError, KeyError):
            raise ModelFileError(f"{self.path}: tensor {name} has unknown type {qtype}") from None
        if dims[0] % bs:
            raise ModelFileError(f"{self.path}: tensor {name}: a row of {dims[0]} elements is not "
                                 f"a whole number of {formats.type_name(qtype)} blocks")
        n = 1
        for d in dims:
            n *= d
        nbytes = n // bs * bb
        if offset + nbytes > self.file_size:
            raise ModelFileError(f"{self.path}: tensor {name} lies outside the file (bytes {offset}.."
                                 f"{offset + nbytes} of {self.file_size}); the file is truncated or corrupt")
        return TensorInfo(name, qtype, tuple(reversed(dims)), offset, nbytes,
                          self._bytes[offset:offset + nbytes])

    def get(self, key, default=None):
        return self.metadata.get(key, default)

    def _locate(self, view):
        """(the GGUFFile among this one and its splits whose mmap holds `view`, the offset
        of view's first byte in that file), or None."""
        if self._bytes is None:
            return None
        start = view.ctypes.data - self._bytes.ctypes.data
        if 0 <= start <= len(self._bytes) - view.nbytes:
            return self, start
        for part in self._parts:   # a tensor of another split
            found = part._locate(view)
            if found is not None:
                return found
        return None

    def release_view(self, view):
        """Drop the pages under `view` (a tensor's data, or part of it) from this
        process's resident set; they stay in the page cache. Copying a shard a chunk at a
        time and releasing each chunk's source keeps the file from being resident next to
        its copy (which would double the peak). Pages shared with a neighbour go too: they
        come back from the page cache if the neighbour is read."""
        if view.nbytes == 0:
            return
        found = self._locate(view)
        if found is None or found[0]._mmap is None:
            return
        part, start = found
        first = start // mmap.PAGESIZE * mmap.PAGESIZE
        end = min(len(part._bytes), -(-(start + view.nbytes) // mmap.PAGESIZE) * mmap.PAGESIZE)
        try:
            part._mmap.madvise(mmap.MADV_DONTNEED, first, end - first)
        except (AttributeError, OSError, ValueError):
            pass

    def read_rows(self, t: TensorInfo, ids) -> np.ndarray:
        """Rows `ids` of tensor t, uint8 (len(ids), bytes per row), read from the file with
        pread rather than through the mmap. A read through the mmap maps its pages into
        this process, and the kernel maps a whole page-cache folio (up to 2 MiB) per fault:
        an embedding lookup of a few KB left ~1.4 MB resident per distinct token (measured
        on a 151936 x 2048 Q8_0 embedding), so a long generation would make the whole
        embedding resident. pread copies from the page cache and maps nothing."""
        row = t.nbytes // t.rows
        out = np.empty((len(ids), row), dtype=np.uint8)
        part, base = self._locate(t.data)
        for k, i in enumerate(ids):
            if os.preadv(part._fd, [out[k]], base + int(i) * row) != row:
                raise ModelFileError(f"{part.path}: row {int(i)} of {t.name} could not be read: "
                                     "the file was truncated after it was opened")
        return out

    def close(self):
        for part in self._parts:
            part.close()
        self._close_fd()
        self._parts = []
        self.tensors = {}
        self._bytes = None
        if self._mmap is not None:
            try:
                self._mmap.close()
            except BufferError:
                pass  # views still alive elsewhere; the mapping goes with them
            self._mmap = None


def _ordinal(index):
    return index + 1 if isinstance(index, int) else "none"


def read_metadata(path) -> dict:
    """Just the metadata (works on vocab-only files)."""
    f = GGUFFile(path)
    meta = f.metadata
    f.close()
    return meta


def describe(value) -> str:
    """A metadata value in a few words, for error messages (a value can be a whole
    vocabulary)."""
    if isinstance(value, bool):
        return f"the boolean {value}"
    if isinstance(value, (int, float)):
        return f"the number {value!r}"
    if isinstance(value, str):
        return f"the string {value[:40]!r}" + ("..." if len(value) > 40 else "")
    if isinstance(value, list):
        return f"an array of {len(value)} values"
    return "missing"
