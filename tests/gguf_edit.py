"""Take a GGUF file apart into raw metadata entries, raw tensor-info entries and tensor
data, change entries (retype a value, drop, duplicate, reorder, move a tensor), and
write it again: the malformed-file tests build their files this way from valid ones.
The file is read with gguf.GGUFReader, a parser independent of numatp's."""
import struct

import gguf

T = gguf.GGUFValueType
SCALAR_CODES = {T.UINT8: "<B", T.INT8: "<b", T.UINT16: "<H", T.INT16: "<h", T.UINT32: "<I",
                 T.INT32: "<i", T.FLOAT32: "<f", T.BOOL: "<?", T.UINT64: "<Q", T.INT64: "<q",
                 T.FLOAT64: "<d"}


def string(s) -> bytes:
    data = s.encode() if isinstance(s, str) else s
    return struct.pack("<Q", len(data)) + data


def scalar(vtype, value) -> bytes:
    return struct.pack(SCALAR_CODES[vtype], value)


def array(etype, items) -> bytes:
    """The payload of an array value of element type `etype`."""
    body = b"".join(string(i) if etype == T.STRING else scalar(etype, i) for i in items)
    return struct.pack("<IQ", etype, len(items)) + body


def nested_array(depth) -> bytes:
    """The payload of [[[...[1]...]]], `depth` arrays deep."""
    return struct.pack("<IQ", T.ARRAY, 1) * (depth - 1) + array(T.INT32, [1])


def kv_entry(key, vtype, payload) -> bytes:
    return string(key) + struct.pack("<I", vtype) + payload


def name_of(entry) -> str:
    """The key of a metadata entry, or the name of a tensor-info entry."""
    n = struct.unpack_from("<Q", entry)[0]
    return entry[8:8 + n].decode(errors="replace")


def value_type(entry) -> int:
    return struct.unpack_from("<I", entry, 8 + len(name_of(entry).encode()))[0]


def tensor_offset(entry) -> int:
    return struct.unpack_from("<Q", entry, len(entry) - 8)[0]


def with_tensor_offset(entry, offset) -> bytes:
    return entry[:-8] + struct.pack("<Q", offset)


def with_tensor_type(entry, qtype) -> bytes:
    return entry[:-12] + struct.pack("<I", qtype) + entry[-8:]


class Layout:
    """A GGUF file as its parts. `kvs` and `tensors` are lists of raw entries to edit;
    encode() writes the file again (the tensor data keeps its offsets, which are
    relative to the data section)."""

    def __init__(self, path):
        r = gguf.GGUFReader(str(path))
        raw = bytes(r.data)
        self.version = int(r.fields["GGUF.version"].parts[0][0])
        self.kvs = [raw[f.offset:f.offset + sum(p.nbytes for p in f.parts)]
                    for name, f in r.fields.items() if not name.startswith("GGUF.")]
        self.tensors = [raw[t.field.offset:t.field.offset + sum(p.nbytes for p in t.field.parts)]
                        for t in r.tensors]
        self.data = raw[r.data_offset:]
        self.alignment = r.alignment

    def index(self, key) -> int:
        return next(i for i, e in enumerate(self.kvs) if name_of(e) == key)

    def tensor_index(self, name) -> int:
        return next(i for i, e in enumerate(self.tensors) if name_of(e) == name)

    def set(self, key, vtype, payload):
        """Give `key` a new value (of any type), adding it if missing."""
        entry = kv_entry(key, vtype, payload)
        try:
            self.kvs[self.index(key)] = entry
        except StopIteration:
            self.kvs.append(entry)
        return self

    def encode(self) -> bytes:
        head = b"GGUF" + struct.pack("<IQQ", self.version, len(self.tensors), len(self.kvs))
        head += b"".join(self.kvs) + b"".join(self.tensors)
        head += b"\0" * (-len(head) % self.alignment)
        return head + self.data

    def write(self, path):
        path.write_bytes(self.encode())
        return path
