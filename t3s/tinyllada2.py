"""A LLaDA-2-shaped mask predictor small enough for a CPU: the fixture of the diffusion sampler's tests and the
"LLaDA-shaped" model of `make bench`.

This file is *remote code*: `t3s.tiny.build_llada2_like` copies it into a model directory and names its classes in
the config's `auto_map`, so the model loads through `trust_remote_code` exactly as LLaDA2.0-mini / LLaDA2.1-mini
do. It imports nothing from t3s. What it mirrors of the published `modeling_llada2_moe.py` (written here from its
behaviour, not copied) is what t3s's code paths depend on:

- the layout: `model_type` "llada2_moe"; `AutoModel` -> the bare backbone (no head), `AutoModelForCausalLM` ->
  backbone + `lm_head`, the checkpoint's `architectures` = the LM; the fused `query_key_value` projection and the
  `dense` output projection (LoRA targets); grouped-query attention; rotary embeddings on a fraction of each head
  (`partial_rotary_factor`) at the given `position_ids`;
- the attention mask: any mask goes through transformers' `_prepare_4d_causal_attention_mask_for_sdpa` with the
  cache length, so a 4-D additive mask is used as it is, a 2-D padding mask with a zero becomes *causal* + padding,
  and no mask (or an all-ones one) becomes no mask at all; attention is `scaled_dot_product_attention` with
  is_causal=False;
- the cache: with `past_key_values` (a transformers `Cache`), each layer rotates the new keys at their positions and
  appends keys and values to the cache, then attends over cache + new; positions default to cache length + arange.

Not mirrored: the mixture-of-experts MLP (a dense SwiGLU here; the sampler does not see the difference), the
generate() method (t3s samples with its own sampler).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_attn_mask_utils import _prepare_4d_causal_attention_mask_for_sdpa
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast


class TinyLlada2Config(PretrainedConfig):
    model_type = "llada2_moe"

    def __init__(
        self,
        vocab_size: int = 64,
        hidden_size: int = 64,
        intermediate_size: int = 128,
        num_hidden_layers: int = 2,
        num_attention_heads: int = 4,
        num_key_value_heads: int = 2,
        head_dim: int | None = None,
        partial_rotary_factor: float = 0.5,
        rope_theta: float = 600000.0,
        max_position_embeddings: int = 4096,
        rms_norm_eps: float = 1e-6,
        mask_token_id: int | None = None,
        **kw,
    ):
        self.vocab_size, self.hidden_size, self.intermediate_size = vocab_size, hidden_size, intermediate_size
        self.num_hidden_layers, self.num_attention_heads = num_hidden_layers, num_attention_heads
        self.num_key_value_heads = num_key_value_heads
        self.head_dim = head_dim or hidden_size // num_attention_heads
        self.partial_rotary_factor, self.rope_theta = partial_rotary_factor, rope_theta
        self.max_position_embeddings, self.rms_norm_eps = max_position_embeddings, rms_norm_eps
        self.mask_token_id = mask_token_id
        kw.setdefault("tie_word_embeddings", False)
        super().__init__(**kw)


class _RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight, self.eps = nn.Parameter(torch.ones(dim)), eps

    def forward(self, h):
        x = h.float()
        return (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)).to(h.dtype) * self.weight


def _rotate(x, cos, sin):
    """Rotary embedding on the first `cos.shape[-1]` channels of each head (the rest pass through)."""
    r = cos.shape[-1]
    xr, xp = x[..., :r], x[..., r:]
    a, b = xr[..., : r // 2], xr[..., r // 2 :]
    return torch.cat([xr * cos + torch.cat([-b, a], -1) * sin, xp], -1)


class TinyLlada2RotaryEmbedding(nn.Module):
    """The rotary frequencies in a non-persistent buffer, as LLaDA2MoeRotaryEmbedding keeps them (with
    `original_inv_freq` and `rope_type`): not in the checkpoint, so whatever loads the model must compute them.
    transformers 5 builds a model on the meta device and re-creates such buffers only through the model's
    `_init_weights`, which remote code written for transformers 4 (this one, like LLaDA-2's) does not extend to
    them: `t3s.models.restore_buffers` does."""

    def __init__(self, config: TinyLlada2Config):
        super().__init__()
        rot = int(config.head_dim * config.partial_rotary_factor) // 2 * 2
        inv_freq = 1.0 / config.rope_theta ** (torch.arange(0, rot, 2, dtype=torch.float32) / rot)
        self.rope_type = "default"
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.original_inv_freq = self.inv_freq


class _Attention(nn.Module):
    def __init__(self, config: TinyLlada2Config, layer_idx: int):
        super().__init__()
        c, self.layer_idx = config, layer_idx
        self.heads, self.kv_heads, self.head_dim = c.num_attention_heads, c.num_key_value_heads, c.head_dim
        self.query_key_value = nn.Linear(c.hidden_size, (self.heads + 2 * self.kv_heads) * self.head_dim, bias=False)
        self.dense = nn.Linear(self.heads * self.head_dim, c.hidden_size, bias=False)

    def forward(self, h, cos, sin, mask, cache):
        b, q_len, _ = h.shape
        qkv = self.query_key_value(h).view(b, q_len, self.heads + 2 * self.kv_heads, self.head_dim).transpose(1, 2)
        q, k, v = qkv.split([self.heads, self.kv_heads, self.kv_heads], dim=1)
        q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
        if cache is not None:  # rotated at their own positions, then appended: the cache holds final keys
            k, v = cache.update(k, v, self.layer_idx)
        rep = self.heads // self.kv_heads
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        a = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=False)
        return self.dense(a.transpose(1, 2).reshape(b, q_len, -1))


class _Layer(nn.Module):
    def __init__(self, config: TinyLlada2Config, layer_idx: int):
        super().__init__()
        c = config
        self.input_layernorm = _RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.attention = _Attention(c, layer_idx)
        self.post_attention_layernorm = _RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.gate_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=False)
        self.up_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=False)
        self.down_proj = nn.Linear(c.intermediate_size, c.hidden_size, bias=False)

    def forward(self, h, cos, sin, mask, cache):
        h = h + self.attention(self.input_layernorm(h), cos, sin, mask, cache)
        x = self.post_attention_layernorm(h)
        return h + self.down_proj(nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))


class TinyLlada2PreTrainedModel(PreTrainedModel):
    config_class = TinyLlada2Config
    base_model_prefix = "model"
    _supports_sdpa = True  # as LLaDA2MoePreTrainedModel: loaded with attn_implementation=sdpa
    _no_split_modules = ["_Layer"]

    def _init_weights(self, module):  # as LLaDA-2's: linear layers and embeddings only
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        elif isinstance(module, _RMSNorm):
            nn.init.ones_(module.weight)


class TinyLlada2Model(TinyLlada2PreTrainedModel):
    """The bare backbone: what LLaDA2's auto_map names under AutoModel (no head, no logits)."""

    def __init__(self, config: TinyLlada2Config):
        super().__init__(config)
        c = config
        self.word_embeddings = nn.Embedding(c.vocab_size, c.hidden_size)
        self.layers = nn.ModuleList([_Layer(c, i) for i in range(c.num_hidden_layers)])
        self.norm = _RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.rotary_emb = TinyLlada2RotaryEmbedding(c)
        self.post_init()

    def forward(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None, use_cache=None, **kw):
        h = self.word_embeddings(input_ids)
        b, q_len = input_ids.shape
        past = past_key_values.get_seq_length() if past_key_values is not None else 0
        if position_ids is None:
            position_ids = torch.arange(past, past + q_len, device=h.device)[None].expand(b, q_len)
        mask = _prepare_4d_causal_attention_mask_for_sdpa(attention_mask, (b, q_len), h, past)
        ang = position_ids[:, None, :, None].float() * self.rotary_emb.inv_freq.to(h.device)
        ang = torch.cat([ang, ang], -1)
        cos, sin = ang.cos().to(h.dtype), ang.sin().to(h.dtype)
        for layer in self.layers:
            h = layer(h, cos, sin, mask, past_key_values)
        return BaseModelOutputWithPast(last_hidden_state=self.norm(h), past_key_values=past_key_values)


class TinyLlada2ForCausalLM(TinyLlada2PreTrainedModel):
    """Backbone + head: what LLaDA2's auto_map names under AutoModelForCausalLM, and its `architectures`."""

    def __init__(self, config: TinyLlada2Config):
        super().__init__(config)
        self.model = TinyLlada2Model(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.word_embeddings

    def get_output_embeddings(self):
        return self.lm_head

    def forward(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None, use_cache=None, **kw):
        out = self.model(input_ids, attention_mask, position_ids, past_key_values, use_cache)
        return CausalLMOutputWithPast(
            logits=self.lm_head(out.last_hidden_state).float(), past_key_values=out.past_key_values
        )
