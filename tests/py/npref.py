"""A plain float64 numpy forward pass of a GGUF llama model: the exact answer that quantized
engines approximate. Slow, small, and independent of both engines (tests and investigations)."""
import gguf
import numpy as np


class NumpyLlama:
    def __init__(self, path):
        r = gguf.GGUFReader(path)
        f = {k: v.contents() for k, v in r.fields.items() if not k.startswith("GGUF.")}
        a = f["general.architecture"]
        self.E = f[f"{a}.embedding_length"]
        self.L = f[f"{a}.block_count"]
        self.H = f[f"{a}.attention.head_count"]
        self.Hkv = f.get(f"{a}.attention.head_count_kv", self.H)
        self.eps = f.get(f"{a}.attention.layer_norm_rms_epsilon", 1e-5)
        self.base = f.get(f"{a}.rope.freq_base", 10000.0)
        self.hd = self.E // self.H
        self.w = {t.name: gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float64) for t in r.tensors}
        self.out = self.w.get("output.weight", self.w["token_embd.weight"])

    def _norm(self, x, w):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + self.eps) * w

    def _rope(self, x, pos):  # x (T, heads, hd); adjacent pairs, as llama GGUFs store q/k
        i = np.arange(self.hd // 2)
        ang = pos[:, None] * self.base ** (-2.0 * i / self.hd)
        c, s = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
        x0, x1 = x[..., 0::2], x[..., 1::2]
        out = np.empty_like(x)
        out[..., 0::2] = x0 * c - x1 * s
        out[..., 1::2] = x0 * s + x1 * c
        return out

    def logits(self, ids):
        T, w = len(ids), self.w
        x = w["token_embd.weight"][ids]
        pos = np.arange(T, dtype=np.float64)
        mask = np.triu(np.full((T, T), -np.inf), 1)
        for l in range(self.L):
            p = f"blk.{l}."
            h = self._norm(x, w[p + "attn_norm.weight"])
            q = (h @ w[p + "attn_q.weight"].T).reshape(T, self.H, self.hd)
            k = (h @ w[p + "attn_k.weight"].T).reshape(T, self.Hkv, self.hd)
            v = (h @ w[p + "attn_v.weight"].T).reshape(T, self.Hkv, self.hd)
            q, k = self._rope(q, pos), self._rope(k, pos)
            g = self.H // self.Hkv
            k, v = np.repeat(k, g, axis=1), np.repeat(v, g, axis=1)
            att = np.einsum("thd,shd->hts", q, k) / np.sqrt(self.hd) + mask
            att = np.exp(att - att.max(-1, keepdims=True))
            att /= att.sum(-1, keepdims=True)
            o = np.einsum("hts,shd->thd", att, v).reshape(T, -1)
            x = x + o @ w[p + "attn_output.weight"].T
            h = self._norm(x, w[p + "ffn_norm.weight"])
            gt, up = h @ w[p + "ffn_gate.weight"].T, h @ w[p + "ffn_up.weight"].T
            x = x + (gt / (1 + np.exp(-gt)) * up) @ w[p + "ffn_down.weight"].T
        return self._norm(x, w["output_norm.weight"]) @ self.out.T
