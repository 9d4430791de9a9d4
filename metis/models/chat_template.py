"""The chat template shared by the tiny and the real models.

It follows Qwen3-VL's layout (``<|im_start|>role\\n…<|im_end|>\\n``, images as
``<|vision_start|><|image_pad|><|vision_end|>``) with two deliberate additions:

* assistant content sits in ``{% generation %}`` blocks, so
  ``return_assistant_tokens_mask=True`` yields the SFT loss mask;
* a ``tool`` message is rendered as a *user* turn, which is how Metis returns tool
  observations to the model (docs/paper.md, "Rollout format": the observation is a new user turn).
"""

CHAT_TEMPLATE = (
    "{%- macro render(content) -%}"
    "{%- if content is string -%}{{ content }}"
    "{%- else -%}{%- for part in content -%}"
    "{%- if part.type == 'image' or 'image' in part -%}{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{%- elif part.type == 'text' -%}{{ part.text }}"
    "{%- endif -%}{%- endfor -%}{%- endif -%}"
    "{%- endmacro -%}"
    "{%- for message in messages -%}"
    "{%- if message.role == 'assistant' -%}"
    "{{ '<|im_start|>assistant\\n' }}{% generation %}{{ render(message.content) }}{{ '<|im_end|>' }}{% endgeneration %}{{ '\\n' }}"
    "{%- else -%}"
    "{{ '<|im_start|>' + ('user' if message.role == 'tool' else message.role) + '\\n' }}"
    "{{ render(message.content) }}{{ '<|im_end|>\\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)
