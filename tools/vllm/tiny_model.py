"""Builds a tiny chat model for a real vLLM engine on CPUs, from nothing fetched: `tiny_model.py OUT_DIR`.

A byte-level BPE tokenizer trained on text generated here, with a chat template, and a 2-layer
Qwen2 with random weights (hidden size 128, 2 heads of 64: vLLM's CPU attention kernels take
head sizes of 32 and up, not 16). Its answers are nonsense; the API, the engine, the scheduler,
the prefix cache and the metrics that serve them are vLLM's own. Runs in the vLLM environment
(tools/vllm/requirements.lock), which has torch, transformers and tokenizers.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

SEED = 20261201
VOCAB = 2048
MAX_POSITIONS = 32768

# Qwen2's ChatML template, written out (the real one is in each Qwen2 model's tokenizer_config.json).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def _corpus(n: int) -> list[str]:
    rng = random.Random(SEED)
    words = (
        "the quick brown fox jumps over a lazy dog while seven wizards quietly hex every jolly "
        "system user assistant prompt answer tenant conversation cache token model replica"
    ).split()
    return [" ".join(rng.choice(words) for _ in range(rng.randint(5, 40))) for _ in range(n)]


def build(out: Path) -> None:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    out.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(4000), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token=None,
        unk_token=None,
        model_max_length=MAX_POSITIONS,
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out)

    torch.manual_seed(SEED)
    config = Qwen2Config(
        vocab_size=tok.get_vocab_size(),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=MAX_POSITIONS,
        tie_word_embeddings=True,
        torch_dtype="bfloat16",
        eos_token_id=tok.token_to_id("<|im_end|>"),
        bos_token_id=tok.token_to_id("<|endoftext|>"),
    )
    model = Qwen2ForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(out, safe_serialization=True)
    (out / "generation_config.json").write_text(json.dumps({"eos_token_id": config.eos_token_id}))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: tiny_model.py OUT_DIR")
    build(Path(sys.argv[1]))
