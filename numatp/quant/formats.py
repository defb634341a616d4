"""The block formats numatp can compute with: elements and bytes per block.

Type codes are GGML's own (gguf.GGMLQuantizationType), so a tensor's code from the file
is used unchanged everywhere, including inside jitted code.
"""
from gguf import GGMLQuantizationType as T
from gguf import GGML_QUANT_SIZES

F32, F16, BF16 = int(T.F32), int(T.F16), int(T.BF16)
Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 = int(T.Q4_0), int(T.Q4_1), int(T.Q5_0), int(T.Q5_1), int(T.Q8_0)
Q2_K, Q3_K, Q4_K, Q5_K, Q6_K = int(T.Q2_K), int(T.Q3_K), int(T.Q4_K), int(T.Q5_K), int(T.Q6_K)
IQ4_NL, IQ4_XS = int(T.IQ4_NL), int(T.IQ4_XS)

# Types with a matvec kernel. Extend together with numatp.quant.kernels.
SUPPORTED = (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K,
             IQ4_NL, IQ4_XS)


def type_name(qtype: int) -> str:
    try:
        return T(qtype).name
    except ValueError:
        return f"type {qtype}"


def supported_names() -> str:
    return ", ".join(type_name(t) for t in SUPPORTED)


def block_size(qtype: int) -> int:
    """Elements per block (1 for the float types)."""
    return GGML_QUANT_SIZES[T(qtype)][0]


def block_bytes(qtype: int) -> int:
    return GGML_QUANT_SIZES[T(qtype)][1]


def row_bytes(qtype: int, cols: int) -> int:
    """Bytes of one row of `cols` elements; cols must be a whole number of blocks."""
    bs, bb = GGML_QUANT_SIZES[T(qtype)]
    if cols % bs:
        raise ValueError(f"{cols} columns is not a whole number of {type_name(qtype)} blocks")
    return cols // bs * bb


# Byte offsets of the fp16 numbers (scales, offsets) inside one block of each quantized
# type, from the GGML format definitions. Test and benchmark matrices made of random
# bytes put finite, modest values there so that every block means something sane.
HALF_FIELDS = {Q8_0: (0,), Q4_0: (0,), Q4_1: (0, 2), Q5_0: (0,), Q5_1: (0, 2),
               IQ4_NL: (0,), Q2_K: (80, 82), Q3_K: (108,), Q4_K: (0, 2), Q5_K: (0, 2),
               Q6_K: (208,), IQ4_XS: (0,)}


def parse_type(name: str) -> int:
    """A type code from its GGML name (case-insensitive); ValueError if unknown."""
    try:
        return int(T[name.strip().upper()])
    except KeyError:
        raise ValueError(f"unknown quant type {name.strip()!r}") from None
