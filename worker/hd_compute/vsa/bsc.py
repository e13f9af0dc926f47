"""BSC (Binary Spatter Codes): binary hypervectors, bit-packed.

Storage: int64 words, 64 dimensions per word (see kernels/bits.py for the layout), so D=10,000 takes 1,256 bytes
instead of 40,000 as float32. Padding bits are always zero and never counted. bind = XOR (self-inverse),
bundle = bitwise majority with ties decided by a fixed tie-break vector, similarity = Hamming distance via
popcount; dot and cosine are those of the bipolar view (bit 0 -> +1, bit 1 -> -1): dot = D - 2 * hamming.
"""

from __future__ import annotations

import torch

from ..kernels import dispatch
from ..kernels.bits import clear_padding, num_words, pack_bits, random_words, unpack_bits
from .base import VSAModel, tiebreak_bipolar


class BSC(VSAModel):
    name = "BSC"
    default_dtype = torch.int64
    allowed_dtypes = (torch.int64,)
    supports_hamming = True

    def storage_width(self, dim: int) -> int:
        return num_words(dim)

    def random(
        self,
        shape: tuple[int, ...],
        dim: int,
        dtype: torch.dtype,
        generator: torch.Generator | None,
        device: torch.device,
    ) -> torch.Tensor:
        return random_words(shape, dim, generator, device)

    def identity(self, shape: tuple[int, ...], dim: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        return torch.zeros((*shape, num_words(dim)), dtype=torch.int64, device=device)

    def bind(self, a: torch.Tensor, b: torch.Tensor, dim: int) -> torch.Tensor:
        return a ^ b

    def inverse(self, a: torch.Tensor, dim: int) -> torch.Tensor:
        return a

    def multiset(self, data: torch.Tensor, dim: int) -> torch.Tensor:
        count = data.shape[-2]
        if data.dim() == 2:
            ones = dispatch.bit_counts(data.contiguous())[:dim]
        else:
            flat = data.reshape(-1, count, data.shape[-1])
            ones = torch.stack([dispatch.bit_counts(block.contiguous())[:dim] for block in flat])
            ones = ones.reshape(*data.shape[:-2], dim)
        return self._majority(ones, count, dim)

    def _majority(self, ones: torch.Tensor, count: int, dim: int) -> torch.Tensor:
        tiebreak_bit = tiebreak_bipolar(dim, ones.device) < 0
        twice = 2 * ones
        bits = torch.where(twice > count, True, torch.where(twice < count, False, tiebreak_bit))
        return pack_bits(bits)

    def permute(self, data: torch.Tensor, shifts: int, dim: int) -> torch.Tensor:
        return pack_bits(torch.roll(unpack_bits(data, dim), shifts=shifts % dim, dims=-1))

    def distances(self, a: torch.Tensor, b: torch.Tensor, dim: int) -> torch.Tensor:
        return dispatch.hamming_matrix(a, b)

    def dot(self, a: torch.Tensor, b: torch.Tensor, dim: int) -> torch.Tensor:
        return dim - 2 * self.distances(a, b, dim)

    def cosine(self, a: torch.Tensor, b: torch.Tensor, dim: int) -> torch.Tensor:
        return self.dot(a, b, dim).float() / dim

    def hamming(self, a: torch.Tensor, b: torch.Tensor, dim: int) -> torch.Tensor:
        return dim - self.distances(a, b, dim)

    def to_dense(self, data: torch.Tensor, dim: int) -> torch.Tensor:
        return 1.0 - 2.0 * unpack_bits(data, dim).float()

    def from_dense(self, dense: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return pack_bits(dense < 0)

    def quantize_sum(self, summed: torch.Tensor, count: int, dtype: torch.dtype) -> torch.Tensor:
        # summed is a bipolar sum: negative means most inputs had bit 1.
        dim = summed.shape[-1]
        tiebreak_bit = tiebreak_bipolar(dim, summed.device) < 0
        return pack_bits(torch.where(summed < 0, True, torch.where(summed > 0, False, tiebreak_bit)))

    def validate(self, data: torch.Tensor, dim: int, name: str = "data") -> None:
        padded = data.clone()
        clear_padding(padded, dim)
        if not torch.equal(padded, data):
            raise ValueError(f"{name}: BSC words have padding bits set beyond dimension {dim}")

    def select(self, mask: torch.Tensor, if_true: torch.Tensor, if_false: torch.Tensor) -> torch.Tensor:
        packed_mask = pack_bits(mask)
        return (if_true & packed_mask) | (if_false & ~packed_mask)
