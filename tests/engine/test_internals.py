"""The third-party internals the studio's fast paths rely on, checked on real peft/diffusers objects.

The fast LoRA operations (weights, load, delete, fuse, the batched forward) write peft's
private attributes directly and swap a layer's class; the manager cancels through the
pipeline's ``_interrupt``; the estimator and the Hub code import private names. None of
that is a public API, so a new release can change it without notice. Each check below
builds the real objects (a tiny peft ``LoraLayer``, a tiny diffusers model, the demo
pipeline) and fails with a sentence naming the internal, what uses it, the installed
version and the range ``requirements.txt`` allows. When one fails after an upgrade: pin
the package back to ``constraints.txt``'s version, or change the studio code that uses
the internal and then raise the bound in ``requirements.txt``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

import pytest
import torch
from packaging.requirements import Requirement
from torch import nn

ROOT = Path(__file__).resolve().parents[2]


def allowed_range(package: str) -> str:
    """The version range requirements.txt gives ``package`` (e.g. ``>=0.17,<0.22``)."""
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        req = Requirement(line)
        if req.name.lower().replace("_", "-") == package.lower().replace("_", "-"):
            return str(req.specifier) or "any version"
    raise AssertionError(f"{package} is not in requirements.txt")


def check(package: str, internal: str, used_by: str, probe: Callable[[], object]) -> None:
    """Run ``probe``; any failure (assertion, missing name or attribute, changed signature) becomes one sentence."""
    try:
        probe()
    except Exception as exc:
        pytest.fail(
            f"{package} {version(package)} changed {internal}, which {used_by} relies on "
            f"({type(exc).__name__}: {exc}). The studio is tested with {package} {allowed_range(package)} "
            f"(requirements.txt; the exact version is in constraints.txt): install that version, or update "
            f"the code that uses {internal} before raising the bound.",
            pytrace=False,
        )


# --------------------------------------------------------------------------- peft objects
class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(6, 5)
        self.other = nn.Linear(5, 4, bias=False)

    def forward(self, x):
        return self.other(self.proj(x))


def lora_model(*names: str, rank: int = 2, alpha: float = 4.0, **config) -> nn.Module:
    """A tiny model with peft LoRA ``Linear`` layers for ``names``, factors set to non-zero values."""
    from peft import LoraConfig, inject_adapter_in_model

    torch.manual_seed(0)
    model = Tiny()
    for name in names:
        cfg = LoraConfig(r=rank, lora_alpha=alpha, target_modules=["proj", "other"], **config)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Already found a `peft_config` attribute": wanted here
            model = inject_adapter_in_model(cfg, model, adapter_name=name)
    for module in model.modules():
        if isinstance(module, nn.Linear) and module.weight.abs().sum() == 0:
            nn.init.normal_(module.weight, std=0.5)  # lora_B starts at zero: make the delta visible
    return model.eval()


def lora_layer(*names: str, **options):
    return lora_model(*names, **options).proj


def test_peft_layer_classes():
    def probe():
        from peft.tuners.lora.layer import Linear, LoraLayer
        from peft.tuners.tuners_utils import BaseTunerLayer

        assert issubclass(Linear, LoraLayer) and issubclass(LoraLayer, BaseTunerLayer)
        layer = lora_layer("a")
        assert type(layer) is Linear, f"a LoRA on nn.Linear is a {type(layer).__name__}"

    check("peft", "peft.tuners.lora.layer.Linear / LoraLayer / tuners_utils.BaseTunerLayer",
          "the fast LoRA path (every operation)", probe)  # fmt: skip


def test_peft_active_adapter_is_what_active_adapters_reads():
    def probe():
        layer = lora_layer("a", "b")
        layer._active_adapter = ["b", "a"]
        assert layer.active_adapters == ["b", "a"], f"active_adapters is {layer.active_adapters}"
        layer._active_adapter = ["a"]
        assert layer.active_adapters == ["a"]

    check("peft", "LoraLayer._active_adapter", "set_adapter_weights, load_adapter and delete_adapters", probe)


def test_peft_disable_adapters_flag():
    def probe():
        layer = lora_layer("a")
        x = torch.randn(3, 6)
        base = layer.get_base_layer()(x)
        layer._disable_adapters = True
        assert layer.disable_adapters is True
        assert torch.equal(layer(x), base), "the layer still applies its adapter"
        layer._disable_adapters = False
        assert layer.disable_adapters is False
        assert not torch.allclose(layer(x), base), "the adapter does not change the output"

    check("peft", "BaseTunerLayer._disable_adapters", "set_adapter_weights (LoRA off)", probe)


def test_peft_scaling_formula():
    def probe():
        for rslora in (False, True):
            layer = lora_layer("a", rank=4, alpha=3.0, use_rslora=rslora)
            assert (layer.r["a"], layer.lora_alpha["a"], layer.use_rslora["a"]) == (4, 3.0, rslora)
            layer.set_scale("a", 0.7)
            expected = 0.7 * 3.0 / (math.sqrt(4) if rslora else 4)
            assert layer.scaling["a"] == pytest.approx(expected), (
                f"scaling {layer.scaling['a']} != {expected}"
            )

    check("peft", "LoraLayer.scaling = weight · lora_alpha / r (√r with rsLoRA)",
          "set_adapter_weights (writes the scales itself)", probe)  # fmt: skip


def test_peft_forward_is_base_plus_scaled_low_rank_product():
    def probe():
        layer = lora_layer("a", "b")
        layer._active_adapter = ["a", "b"]
        layer.scaling["a"], layer.scaling["b"] = 0.5, -1.5
        x = torch.randn(3, 6)
        expected = layer.get_base_layer()(x)
        for name in ("a", "b"):
            expected = expected + layer.lora_B[name](layer.lora_A[name](x)) * layer.scaling[name]
        torch.testing.assert_close(layer(x), expected)

    check("peft", "lora.Linear.forward (y = base(x) + Σ scaling·B(A(x)))",
          "the batched fast forward (it must compute the same)", probe)  # fmt: skip


def test_peft_per_adapter_containers():
    def probe():
        layer = lora_layer("a", lora_dropout=0.0)
        for attr in ("r", "lora_alpha", "scaling", "use_rslora", "use_dora", "lora_bias", "lora_dropout"):
            assert "a" in getattr(layer, attr), f"{attr} has no entry for the adapter"
        assert isinstance(layer.lora_A, nn.ModuleDict) and isinstance(layer.lora_B, nn.ModuleDict)
        assert tuple(layer.lora_A["a"].weight.shape) == (2, 6) and tuple(layer.lora_B["a"].weight.shape) == (
            5,
            2,
        )
        assert {"lora_A", "lora_B"} <= set(layer.adapter_layer_names)
        assert {"r", "lora_alpha", "scaling", "lora_dropout", "use_rslora", "use_dora", "lora_bias"} <= set(
            layer.other_param_names
        )
        assert isinstance(layer.frozen_peft_weight_names, dict)
        assert isinstance(layer._caches, dict)
        assert layer._all_available_adapter_names() == ["a"]
        assert (layer.in_features, layer.out_features, layer.fan_in_fan_out) == (6, 5, False)
        assert layer.is_target_conv_1d_layer is False and layer.cast_input_dtype_enabled is True

    check("peft", "LoraLayer's per-adapter dicts, adapter_layer_names/other_param_names, "
          "frozen_peft_weight_names, _caches and _all_available_adapter_names()",
          "load_adapter (fills them) and delete_adapters (empties them)", probe)  # fmt: skip


def test_peft_layer_built_around_a_base_layer():
    def probe():
        from peft.tuners.lora.layer import Linear, LoraLayer

        base = nn.Linear(6, 5)
        layer = Linear.__new__(Linear)
        nn.Module.__init__(layer)
        LoraLayer.__init__(layer, base)
        assert layer.get_base_layer() is base
        assert layer.r == {} and len(layer.lora_A) == 0 and layer.merged_adapters == []
        assert layer.lora_variant == {}
        assert (layer.in_features, layer.out_features) == (6, 5)

    check("peft", "LoraLayer.__init__(layer, base_layer)", "load_adapter (wraps a Linear without peft's init)",
          probe)  # fmt: skip


def test_peft_merged_adapters_drive_merged_and_unmerge():
    def probe():
        layer = lora_layer("a")
        weight = layer.get_base_layer().weight.detach().clone()
        layer.merge(adapter_names=["a"])
        assert layer.merged_adapters == ["a"] and layer.merged
        layer.unmerge()
        assert layer.merged_adapters == [] and not layer.merged
        torch.testing.assert_close(layer.get_base_layer().weight, weight)
        # The studio fuses by itself and records the adapter here: peft's unmerge must take it out.
        with torch.no_grad():
            layer.get_base_layer().weight += layer.get_delta_weight("a")
        layer.merged_adapters = ["a"]
        assert layer.merged
        layer.unmerge()
        torch.testing.assert_close(layer.get_base_layer().weight, weight)

    check("peft", "LoraLayer.merged_adapters", "fuse / unfuse (and diffusers' unfuse_lora after them)", probe)


def test_peft_variants_are_listed_in_lora_variant():
    def probe():
        plain = lora_layer("a")
        assert plain.lora_variant == {}, f"a plain LoRA has variants {list(plain.lora_variant)}"
        dora = lora_layer("d", use_dora=True)
        assert "d" in dora.lora_variant, "a DoRA adapter is not in lora_variant"

    check("peft", "LoraLayer.lora_variant", "the fast forward and fuse (they step aside for DoRA and other variants)",
          probe)  # fmt: skip


def test_peft_layer_class_can_be_swapped():
    def probe():
        from peft.tuners.lora.layer import Linear

        class Swapped(Linear):
            def forward(self, x, *args, **kwargs):
                return super().forward(x, *args, **kwargs)

        layer = lora_layer("a")
        x = torch.randn(3, 6)
        before = layer(x)
        layer.__class__ = Swapped
        torch.testing.assert_close(layer(x), before)
        layer.__class__ = Linear
        torch.testing.assert_close(layer(x), before)

    check("peft", "assigning lora.Linear's __class__ (a subclass with the same state)",
          "enable_fast_forward / disable_fast_forward", probe)  # fmt: skip


# --------------------------------------------------------------------------- diffusers objects
TINY_WAN = dict(
    patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=4, in_channels=4, out_channels=4,
    text_dim=8, freq_dim=16, ffn_dim=8, num_layers=1, rope_max_seq_len=16,
)  # fmt: skip


def tiny_transformer():
    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    return WanTransformer3DModel(**TINY_WAN).eval()


def test_diffusers_group_offload_probe():
    def probe():
        from diffusers.hooks.group_offloading import _is_group_offload_enabled

        model = tiny_transformer()
        assert _is_group_offload_enabled(model) is False
        model.enable_group_offload(torch.device("cpu"), offload_type="block_level", num_blocks_per_group=1)
        assert _is_group_offload_enabled(model) is True

    check("diffusers", "diffusers.hooks.group_offloading._is_group_offload_enabled",
          "load_adapter / delete_adapters (group-offloaded models go through diffusers)", probe)  # fmt: skip


def test_diffusers_peft_kwargs_and_config_flag():
    def probe():
        from diffusers.utils.peft_utils import get_peft_kwargs
        from peft import LoraConfig

        state = {
            "blocks.0.attn1.to_q.lora_A.weight": torch.zeros(2, 8),
            "blocks.0.attn1.to_q.lora_B.weight": torch.zeros(8, 2),
        }
        ranks = {"^blocks.0.attn1.to_q.lora_B.weight": 2}
        config = LoraConfig(**get_peft_kwargs(ranks, None, state))
        assert config.r == 2 and config.lora_alpha == 2, f"r={config.r}, lora_alpha={config.lora_alpha}"
        assert "blocks.0.attn1.to_q" in config.target_modules

        model = tiny_transformer()
        assert model._hf_peft_config_loaded is False
        try:
            model.disable_adapters()
            raise AssertionError("disable_adapters() no longer checks _hf_peft_config_loaded")
        except ValueError:
            pass  # diffusers refuses adapter calls until the flag says adapters are loaded
        model.load_lora_adapter(dict(state), adapter_name="a", prefix=None)
        assert model._hf_peft_config_loaded is True and "a" in model.peft_config
        model.disable_adapters()  # accepted now

    check("diffusers", "diffusers.utils.peft_utils.get_peft_kwargs and ModelMixin._hf_peft_config_loaded",
          "load_adapter (records the LoraConfig diffusers would) and delete_adapters", probe)  # fmt: skip


def test_diffusers_hook_attributes():
    def probe():
        from diffusers.hooks._common import _GO_LC_SUPPORTED_PYTORCH_LAYERS
        from diffusers.hooks.layerwise_casting import DEFAULT_SKIP_MODULES_PATTERN

        assert nn.Linear in _GO_LC_SUPPORTED_PYTORCH_LAYERS
        assert isinstance(DEFAULT_SKIP_MODULES_PATTERN, tuple) and DEFAULT_SKIP_MODULES_PATTERN
        model = tiny_transformer()
        model.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.float32)
        hooked = [m for m in model.modules() if isinstance(m, nn.Linear) and hasattr(m, "_diffusers_hook")]
        assert hooked, "no Linear carries _diffusers_hook after enable_layerwise_casting"

    check("diffusers", "diffusers.hooks._common._GO_LC_SUPPORTED_PYTORCH_LAYERS, "
          "layerwise_casting.DEFAULT_SKIP_MODULES_PATTERN and the _diffusers_hook attribute",
          "the VRAM estimator (fp8 layers) and the fast forward (steps aside for hooked layers)", probe)  # fmt: skip


def test_diffusers_pipeline_interrupt(demo_model_dir, start_image):
    def probe():
        from diffusers import WanImageToVideoPipeline

        pipe = WanImageToVideoPipeline.from_pretrained(demo_model_dir)
        pipe.set_progress_bar_config(disable=True)
        calls = []

        def on_step(p, i, t, kwargs):
            calls.append(i)
            p._interrupt = True
            return kwargs

        pipe(image=start_image.resize((32, 32)), prompt="a cat", height=32, width=32, num_frames=5,
             num_inference_steps=3, guidance_scale=1.0, output_type="latent",
             callback_on_step_end=on_step)  # fmt: skip
        assert calls == [0], f"steps run after _interrupt was set: {calls}"
        assert pipe.interrupt is True

    check("diffusers", "the Wan pipeline's _interrupt flag", "cancelling a render between steps", probe)


# --------------------------------------------------------------------------- accelerate, torch, huggingface_hub
def test_accelerate_hook_attribute():
    def probe():
        from accelerate.hooks import ModelHook, add_hook_to_module

        module = nn.Linear(2, 2)
        add_hook_to_module(module, ModelHook())
        assert hasattr(module, "_hf_hook")

    check("accelerate", "the _hf_hook attribute of accelerate.hooks.add_hook_to_module",
          "the fast forward (steps aside for offloaded layers)", probe)  # fmt: skip


def test_torch_module_internals():
    def probe():
        parent = nn.Sequential(nn.Linear(2, 2))
        assert list(parent._modules) == ["0"]
        child = parent[0]
        assert not child._forward_hooks and not child._forward_pre_hooks
        child.register_forward_hook(lambda *a: None)
        child.register_forward_pre_hook(lambda *a: None)
        assert len(child._forward_hooks) == 1 and len(child._forward_pre_hooks) == 1

    check("torch", "nn.Module._modules / _forward_hooks / _forward_pre_hooks",
          "the fast LoRA path (walks the model, detects hooked layers)", probe)  # fmt: skip


def test_huggingface_hub_internals():
    def probe():
        from huggingface_hub.file_download import repo_folder_name
        from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

        assert repo_folder_name(repo_id="owner/name", repo_type="model") == "models--owner--name"
        assert callable(hf_raise_for_status)
        assert "user-agent" in {k.lower() for k in build_hf_headers(token=None)}
        session = get_session()
        assert callable(session.get) and callable(session.stream)

    check("huggingface_hub", "huggingface_hub.file_download.repo_folder_name and utils.get_session().stream",
          "the Hub client (cache lookups, remote header reads)", probe)  # fmt: skip
