"""Holo3 = Qwen3.5, dense or MoE (Holo3-35B-A3B): a hybrid decoder, three Gated DeltaNet layers to
each gated attention layer, under Qwen3-VL's vision tower without DeepStack.

Its caches are of two kinds (a recurrent state per Gated DeltaNet layer, KV per attention layer),
so the prefix cache resumes it at image and message ends only (docs/architecture.md). It answers
positions normalized to 0-1000 as Holo2 does; its processor is Qwen3-VL's (patch 16, merge 2). Its
checkpoints call tools in Qwen3.5's XML form (tool_format_xml.py).
"""

from functools import partial

from ...agent import AgentLoop, holo2_localization_prompt, holo2_localization_schema
from ...coordinates import NORMALIZED_1000
from ...image import ImageProcessorConfig
from ...tool_format_xml import XML
from ..base import Family
from ..qwen3_vl import PROCESSOR
from .config import ARCHITECTURES, MODEL_TYPES, ModelConfig, mlx_vlm_layout
from .model import build
from .weights import DRAFT_HEAD, FLOAT32_WEIGHTS, quantizable, sanitize

FAMILY = Family(
    name="qwen3_5", description="Holo3 / Qwen3.5, dense and MoE hybrid",
    model_types=MODEL_TYPES, architectures=ARCHITECTURES,
    config=ModelConfig.from_dict, model=build, sanitize=sanitize, mlx_config=mlx_vlm_layout,
    quantizable=quantizable, float32_weights=FLOAT32_WEIGHTS, unrun_prefixes=(DRAFT_HEAD,),
    image_processor=partial(ImageProcessorConfig.from_pretrained, defaults=PROCESSOR),
    image_placeholder="<|vision_start|><|image_pad|><|vision_end|>",
    # Hcompany asks Holo3 and Holo3.1 with Holo2's instruction and schema (hub.hcompany.ai/element-localization).
    localization_prompt=holo2_localization_prompt, localization_schema=holo2_localization_schema,
    coordinates=NORMALIZED_1000,
    # Hcompany's harness for Holo3 on (hub.hcompany.ai/agent-loop); Holo1.5 and Holo2 keep Surfer-H's.
    harness=AgentLoop,
    tool_format=XML,
    max_side=None, max_pixels=None,
)
