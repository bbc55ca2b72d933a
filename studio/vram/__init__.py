"""VRAM and host-RAM estimate of a render, before it runs (pure: no GPU, no model load).

:func:`estimate` answers "will this fit?" for a model, a storage precision, a memory
mode, a LoRA stack and a render size; :func:`suggest` picks the fastest setup that
fits a card. Both are plain functions of their arguments (plus the architecture
configs of :mod:`studio.models.shapes`), cheap enough to call on every UI change:
the first call for a model imports diffusers/transformers if needed and builds the
components on the ``meta`` device (~0.1 s after the imports); later calls are
arithmetic (~0.2 ms).

How each part is counted
------------------------

*Weights* come from the real parameter shapes (see :mod:`studio.models.shapes`), with the
dtype each parameter really has once loaded (fp32-kept modules, fp8 layerwise
storage). *LoRA weights* are ``rank·(in+out)`` per targeted Linear of each targeted
block, in the model dtype (diffusers/PEFT cast them to it), per expert they are loaded
into; fused LoRAs stay loaded (``unfuse_lora`` needs them).

*Activations of one transformer forward* replay ``WanTransformerBlock.forward`` of
diffusers tensor by tensor (:func:`_diffusers_block`): which intermediate tensors are
alive at each step, in which dtype (the bf16 residual stream, the fp32 copies made by
``.float()`` around the norms and the gated residual adds, q/k/v, the composite
RMSNorm's fp32 temporaries, the fp32 RoPE halves, the SDPA output — no L×L matrix:
flash / memory-efficient attention — the FFN hidden of ``ffn_dim`` before and after
GELU, the extra output-sized tensors of unfused LoRA layers). Their sum at the worst
step is the peak; it is exact per token up to kernel workspaces (the tests check it
against the live tensors of a real forward on CPU). Classifier-free guidance runs the
conditional and unconditional passes one after the other in diffusers, so it adds the
kept first prediction and the negative prompt embeddings, not a second set of
activations (``cfg_batched=True`` models a runtime that batches them: twice the
tokens).

*VAE decode/encode* walk the Wan VAE's causal decoder/encoder from its config: it
works one latent frame (decode) or four video frames (encode) at a time, keeps a
two-frame cache per causal convolution (counted in full), and its biggest moment is a
residual block or the fp32 nearest-upsample at full resolution; the decoded video is
accumulated on the GPU. Tiling (``AutoencoderKLWan.enable_tiling``) bounds the working
set to 256×256-pixel tiles but keeps all decoded tiles until they are blended.

*Memory modes* decide what is resident in each phase (text encoding, image encoding,
denoising with each expert, decoding):

``gpu``            everything on the GPU all the time.
``model-offload``  diffusers ``enable_model_cpu_offload``: one component at a time in the
                   order text_encoder → transformer → transformer_2 → vae; a component
                   leaves the GPU when the *next one in that order* starts, so the VAE
                   (loaded for the I2V image encoding) stays during denoising, and the
                   text encoder is still there while the image is encoded.
``group-offload``  ``enable_group_offload(block_level, num_blocks_per_group=1,
                   use_stream=True)``: per transformer, everything outside the blocks
                   plus two blocks (the running one and the prefetched next one); the
                   UMT5 stack is not a ModuleList, so the text encoder goes up whole.
``sequential``     ``enable_sequential_cpu_offload``: only the running leaf module's
                   weights (the biggest: UMT5's 2.1 GB embedding while encoding text).

A CUDA context (~0.8 GB: driver, cuBLAS/cuDNN handles; not reported by
``torch.cuda.max_memory_allocated``) is added to every phase; see
:attr:`Estimate.torch_peak_bytes` for the number to compare with the allocator.

Host RAM: the pipeline is loaded on the CPU first (all weights in bf16), offloaded
components live there, group offloading makes pinned copies, fusing keeps a host copy of
every weight the LoRAs touch (so unfusing is exact; not with fp8 or sequential offload,
which do not fuse), and the decoded frames come back as float32 arrays; plus the Python
process itself.

Calibration: the weights equal those of real modules; the transformer and VAE
activations match the live tensors of real diffusers forwards on CPU within a few
percent (tests/vram/test_vram.py). The published Wan2.2 peaks (41.0 / 59.7 GB, A14B
480p / 720p on one H100) were measured with the official code, whose forward keeps
per-token fp32 modulation tensors that diffusers does not: ``runtime="wan-reference"``
counts those and lands within 10% of the table; diffusers itself needs ~11 GB less at
480p and ~26 GB less at 720p. RMSNorm is counted as the composite op (fp32
temporaries); ``fused_rms_norm=True`` counts a fused kernel instead.

GGUF storage is not supported by the estimator (nor fp8 text encoders).
"""
