"""Checkpoints written by transformers' own `Trainer` (not by this harness): a directory of checkpoint-N dirs, as
torchtitan / OLMo-core / nanoGPT exports or the Trainer leave them. A tiny GPT-2 with its own byte-level BPE
tokenizer (trained here, so no hub access), other than any data build's: its loss is only comparable in bits per
byte. ~3 s on one core."""

from __future__ import annotations

from pathlib import Path

TEXT = [
    "The quick brown fox jumps over the lazy dog. " * 3,
    "Seven plus five is twelve, and twelve minus five is seven. " * 2,
    "def add(a, b):\n    return a + b\n" * 3,
    "It is a truth universally acknowledged that a single man wants a wife. " * 2,
]


def foreign_tokenizer() -> object:
    """A byte-level BPE of vocab 300 trained on TEXT, as a PreTrainedTokenizerFast."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(TEXT, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<eos>", eos_token="<eos>", pad_token="<eos>")


def train_with_hf_trainer(out: Path, steps: int = 6, save_steps: int = 2) -> Path:
    """Train a 1-layer GPT-2 for `steps` steps with transformers.Trainer, saving every `save_steps`: out holds
    checkpoint-<save_steps>, ..., checkpoint-<steps> (weights, config, tokenizer, trainer_state.json)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

    torch.manual_seed(0)
    tokenizer = foreign_tokenizer()
    eos = tokenizer.eos_token_id
    config = GPT2Config(
        vocab_size=len(tokenizer), n_positions=64, n_embd=16, n_layer=1, n_head=2, bos_token_id=eos, eos_token_id=eos
    )
    config.pad_token_id = eos
    model = GPT2LMHeadModel(config)
    ids = [tokenizer(t)["input_ids"][:32] for t in TEXT]
    dataset = [{"input_ids": x, "labels": x} for x in ids]
    args = TrainingArguments(
        output_dir=str(out),
        max_steps=steps,
        save_steps=save_steps,
        per_device_train_batch_size=1,
        learning_rate=1e-3,
        report_to=[],
        use_cpu=True,
        logging_strategy="no",
        disable_tqdm=True,
        save_only_model=True,
    )
    Trainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer).train()
    return out
