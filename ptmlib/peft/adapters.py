"""Parameter-efficient fine-tuning methods, written out: LoRA, IA3, bottleneck adapters, prompt tuning.

Each wraps a frozen `nn.Linear` (shapes: x (..., d_in) -> (..., d_out)):

    LoRA      y = W x + b + (alpha / r) * B A x      A: (r, d_in) Kaiming-uniform, B: (d_out, r) zeros
    IA3       y = l * (W x + b)  (attention keys/values)   or   y = W (l * x) + b  (feed-forward layers)
              with l a learned vector initialised at ones
    adapter   y = h + U relu(D h) applied to a layer's output h; U zero-initialised, so it starts as identity

At initialisation LoRA, IA3 and adapters leave the network's function unchanged. LoRA and IA3 merge
exactly into the frozen weight (`merge`), so the adapted model costs nothing extra at inference.
`GatedLoRALinear` adds a diagonal gate between B and A whose L1 penalty selects the rank.
`replace_linears` swaps wrappers in for the linear layers whose qualified names pass a test (Part III's
one layer-swapping mechanism); `inject` is the usual case: freeze the model, match names by suffix.
`PromptTuning` instead prepends n learned input vectors to a frozen model (with an attention mask, the
prompt positions are always visible). The tests check LoRA, IA3
and prompt tuning against the `peft` library on the same model (same outputs after the same updates).
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn


class LoRALinear(nn.Module):
    """A frozen linear layer plus a trainable rank-r update scaled by alpha / r."""

    def __init__(self, base: nn.Linear, r: int = 8, alpha: float = 16.0) -> None:
        super().__init__()
        self.base = base.requires_grad_(False)
        self.A = nn.Parameter(torch.empty(r, base.in_features))
        self.B = nn.Parameter(torch.zeros(base.out_features, r))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))  # nn.Linear's default, as in the LoRA paper's code
        self.scaling = alpha / r

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + F.linear(F.linear(x, self.A), self.B) * self.scaling

    def merged(self) -> nn.Linear:
        """A plain linear layer with W + (alpha / r) B A: the same function, no extra cost."""
        out = nn.Linear(self.base.in_features, self.base.out_features, bias=self.base.bias is not None)
        with torch.no_grad():
            out.weight.copy_(self.base.weight + self.scaling * self.B @ self.A)
            if self.base.bias is not None:
                out.bias.copy_(self.base.bias)
        return out


class GatedLoRALinear(LoRALinear):
    """LoRA with a learned diagonal between B and A (rank-selective LoRA, Lu et al., P38):
    y = W x + b + (alpha / r) B diag(g) A x, g initialised at ones. An L1 penalty on g, applied as a
    soft threshold after each optimiser step (`soft_threshold_`), drives whole ranks to exactly zero;
    `active_rank` counts those left. `bake` folds the current update into the frozen weight and
    restarts the adapter (fresh A, zero B, unit g) - the function is unchanged."""

    def __init__(self, base: nn.Linear, r: int = 8, alpha: float = 16.0) -> None:
        super().__init__(base, r, alpha)
        self.g = nn.Parameter(torch.ones(r))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + F.linear(F.linear(x, self.A) * self.g, self.B) * self.scaling

    def active_rank(self) -> int:
        return int((self.g != 0).sum())

    @torch.no_grad()
    def bake(self) -> None:
        self.base.weight += self.scaling * (self.B * self.g) @ self.A
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))
        self.B.zero_()
        self.g.fill_(1.0)


@torch.no_grad()
def soft_threshold_(params: list[torch.Tensor], amount: float) -> None:
    """The proximal step of an L1 penalty, in place: p <- sign(p) max(|p| - amount, 0)."""
    for p in params:
        p.copy_(torch.sign(p) * (p.abs() - amount).clamp(min=0))


class IA3Linear(nn.Module):
    """A frozen linear layer whose output (or, for feed-forward layers, input) is rescaled by a
    learned vector l, initialised at ones."""

    def __init__(self, base: nn.Linear, feedforward: bool = False) -> None:
        super().__init__()
        self.base = base.requires_grad_(False)
        self.feedforward = feedforward
        self.l = nn.Parameter(torch.ones(base.in_features if feedforward else base.out_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x * self.l) if self.feedforward else self.base(x) * self.l

    def merged(self) -> nn.Linear:
        out = nn.Linear(self.base.in_features, self.base.out_features, bias=self.base.bias is not None)
        with torch.no_grad():
            if self.feedforward:  # W (l * x) = (W diag(l)) x
                out.weight.copy_(self.base.weight * self.l[None, :])
                if self.base.bias is not None:
                    out.bias.copy_(self.base.bias)
            else:  # l * (W x + b) = (diag(l) W) x + l * b
                out.weight.copy_(self.base.weight * self.l[:, None])
                if self.base.bias is not None:
                    out.bias.copy_(self.base.bias * self.l)
        return out


class Adapter(nn.Module):
    """A bottleneck adapter (Houlsby et al.) after a frozen linear layer: h + U relu(D h)."""

    def __init__(self, base: nn.Linear, bottleneck: int = 16) -> None:
        super().__init__()
        self.base = base.requires_grad_(False)
        self.down = nn.Linear(base.out_features, bottleneck)
        self.up = nn.Linear(bottleneck, base.out_features)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.base(x)
        return h + self.up(F.relu(self.down(h)))


def replace_linears(model: nn.Module, wrap: Callable[[str, nn.Linear], nn.Module],
                    where: Callable[[str], bool] = lambda name: True) -> list[str]:
    """Replace every nn.Linear of `model` whose qualified name satisfies `where(name)` by wrap(name, layer),
    in `named_modules` order; returns the names replaced. The one layer-swapping mechanism of Part III."""
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and where(n)]
    for name in names:
        model.set_submodule(name, wrap(name, model.get_submodule(name)))
    return names


def inject(model: nn.Module, targets: list[str], wrap: Callable[[str, nn.Linear], nn.Module]) -> list[str]:
    """Freeze `model` and replace every nn.Linear whose qualified name ends with one of `targets` by
    wrap(name, layer) (`replace_linears` with a suffix test). Returns the names replaced (raises if none matched)."""
    suffixes = tuple(targets)
    if not any(isinstance(m, nn.Linear) and n.endswith(suffixes) for n, m in model.named_modules()):
        raise ValueError(f"no nn.Linear matches {targets}")
    model.requires_grad_(False)
    return replace_linears(model, wrap, lambda name: name.endswith(suffixes))


def merge(model: nn.Module) -> nn.Module:
    """Replace every LoRA / IA3 wrapper in `model` by its merged nn.Linear (in place); returns model."""
    for name, module in list(model.named_modules()):
        if isinstance(module, (LoRALinear, IA3Linear)):
            model.set_submodule(name, module.merged())
    return model


class PromptTuning(nn.Module):
    """Soft prompt tuning (Lester et al.): n learned vectors prepended to the input embeddings of a
    frozen model. forward(input_ids (B, T)) -> the model's output on (B, n + T) embedded positions.
    `init` (n, C) starts the prompt from given vectors (e.g. the embeddings of real words, or a
    pretrained prompt); the default samples rows of the model's own embedding table."""

    def __init__(self, model: nn.Module, n_tokens: int, init: torch.Tensor | None = None) -> None:
        super().__init__()
        self.model = model.requires_grad_(False)
        table = model.get_input_embeddings().weight
        if init is None:
            init = table[torch.randint(0, table.shape[0], (n_tokens,))].detach()
        self.prompt = nn.Parameter(init.clone().reshape(n_tokens, table.shape[1]))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs):
        embeds = self.model.get_input_embeddings()(input_ids)  # (B, T, C)
        prompt = self.prompt[None].expand(input_ids.shape[0], -1, -1).to(embeds.dtype)
        if attention_mask is not None:  # the prompt positions are always attended to
            ones = attention_mask.new_ones(input_ids.shape[0], self.prompt.shape[0])
            kwargs["attention_mask"] = torch.cat([ones, attention_mask], 1)
        return self.model(inputs_embeds=torch.cat([prompt, embeds], 1), **kwargs)


def lora_vs_peft(model: nn.Module, targets: list[str], r: int, alpha: float, batches: list[torch.Tensor],
                 loss: Callable[[nn.Module, torch.Tensor], torch.Tensor], lr: float = 1e-2) -> dict[str, float]:
    """Largest |difference| between this module's LoRA and the `peft` library's on copies of `model`:
    at initialisation (same A, B), after one AdamW step per batch, and after merging. Inputs: batches
    of input ids; `loss(model, ids)` a scalar."""
    import copy
    import warnings

    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    with warnings.catch_warnings():  # peft 0.21 calls a transformers method deprecated in 5.x
        warnings.simplefilter("ignore", FutureWarning)
        theirs = get_peft_model(copy.deepcopy(model), LoraConfig(r=r, lora_alpha=alpha, target_modules=targets,
                                                                 lora_dropout=0.0))
    ours = copy.deepcopy(model)
    inject(ours, targets, lambda n, lin: LoRALinear(lin, r, alpha))
    for name, module in ours.named_modules():  # start from peft's random A (B is zero in both)
        if isinstance(module, LoRALinear):
            module.A.data.copy_(theirs.get_submodule("base_model.model." + name).lora_A["default"].weight)
    x = batches[0]

    def gap() -> float:
        with torch.no_grad():
            return float((ours(input_ids=x).logits - theirs(input_ids=x).logits).abs().max())

    out = {"init": gap()}
    opts = [torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=lr) for m in (ours, theirs)]
    for ids in batches:
        for m, opt in zip((ours, theirs), opts):
            opt.zero_grad()
            loss(m, ids).backward()
            opt.step()
    out["trained"] = gap()
    merge(ours)
    theirs = theirs.merge_and_unload()
    out["merged"] = gap()
    return out
