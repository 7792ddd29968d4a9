"""Asking a model many questions at once: batched greedy answers for held-out evaluation."""
import torch


def left_pad(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) with every sequence right-aligned, so generation continues them together."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, width - len(seq):] = torch.tensor(seq, dtype=torch.long)
        mask[row, width - len(seq):] = 1
    return ids, mask


def chat_prompt(tokenizer, question: str, system: str | None = None) -> list[int]:
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": question}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer.encode(text, add_special_tokens=False)


@torch.no_grad()
def answer_questions(model, tokenizer, questions: list[str], max_new_tokens: int = 64, batch_size: int = 64,
                     chat: bool = True, device=None) -> list[str]:
    """Greedy replies, decoded without special tokens. `chat=False` continues plain text (pretrained models).

    Questions are sorted by length so each batch pads little; replies come back in the input order.
    """
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    prompts = [chat_prompt(tokenizer, q) if chat else [tokenizer.bos_token_id] + tokenizer.encode(q, add_special_tokens=False)
               for q in questions]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    replies = [""] * len(prompts)
    for start in range(0, len(order), batch_size):
        batch = order[start:start + batch_size]
        ids, mask = left_pad([prompts[i] for i in batch], tokenizer.pad_token_id)
        out = model.fast_generate(ids.to(device), mask.to(device), max_new_tokens=max_new_tokens, do_sample=False,
                                  eos_token_id=tokenizer.eos_token_id)
        for row, i in enumerate(batch):
            new = out[row, ids.shape[1]:].tolist()
            if tokenizer.eos_token_id in new:
                new = new[:new.index(tokenizer.eos_token_id)]
            replies[i] = tokenizer.decode(new, skip_special_tokens=True)
    model.train(was_training)
    return replies
