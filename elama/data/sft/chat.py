"""Llama 3.1 chat rendering with the loss mask: token for token what the exported tokenizer's
`apply_chat_template` produces, plus a mask that is 1 exactly on assistant content tokens and the
<|eot_id|> closing each assistant turn. Records are chat `messages` or ShopBench-style rows."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from elama.tokenizer import Llama3Tokenizer

TRUNCATION = ("reject", "truncate")
REJECT_REASONS = ("malformed_json", "blank_line", "missing_key", "non_string_key", "bad_messages",
                  "bad_role_order", "empty_answer", "too_long")


class ChatRecordError(ValueError):
    """A record that cannot become a training example; `reason` is one of REJECT_REASONS."""

    def __init__(self, reason: str, detail: str):
        self.reason = reason
        super().__init__(f"{reason}: {detail}")


@dataclass(frozen=True)
class ChatFields:
    """Which record fields hold what (the preprocess flags)."""
    messages_key: str = "messages"
    input_key: str = "input_field"
    output_key: str = "output_field"
    system_key: str | None = None
    area_key: str = "area"
    task_key: str = "task"


@dataclass(frozen=True)
class Rendered:
    ids: list[int]
    mask: list[int]
    """1 where ids[i] is a token the model is trained to predict (an answer token)."""
    truncated: bool = False

    @property
    def answer_tokens(self) -> int:
        return sum(self.mask)


def record_messages(record: dict, fields: ChatFields) -> list[dict]:
    """The conversation of a record: its `messages` list, or a ShopBench row's input as the user
    turn and output as the answer (with an optional system prompt)."""
    if fields.messages_key in record:
        messages = record[fields.messages_key]
        if not isinstance(messages, list) or not all(
                isinstance(m, dict) and isinstance(m.get("content"), str) for m in messages):
            raise ChatRecordError("bad_messages", f"{fields.messages_key!r} must be a list of "
                                  "{role, content: str} objects")
        return messages
    for key in (fields.input_key, fields.output_key):
        if key not in record:
            raise ChatRecordError("missing_key", f"no {fields.messages_key!r} and no {key!r}")
        if not isinstance(record[key], str):
            raise ChatRecordError("non_string_key", f"{key!r} is {type(record[key]).__name__}")
    messages = [{"role": "user", "content": record[fields.input_key]},
                {"role": "assistant", "content": record[fields.output_key]}]
    if fields.system_key and isinstance(record.get(fields.system_key), str):
        messages.insert(0, {"role": "system", "content": record[fields.system_key]})
    return messages


def check_roles(messages: Sequence[dict]) -> None:
    """An optional system turn, then user/assistant alternating, ending with an answer."""
    roles = [m.get("role") for m in messages]
    body = roles[1:] if roles[:1] == ["system"] else roles
    expected = ["user", "assistant"] * (len(body) // 2 + 1)
    if not body or len(body) % 2 or body != expected[:len(body)]:
        raise ChatRecordError("bad_role_order", f"roles {roles}: expected [system,] user, "
                              "assistant, user, assistant, ... ending with assistant")
    for i, m in enumerate(messages):
        if m["role"] == "assistant" and not m["content"].strip():
            raise ChatRecordError("empty_answer", f"message {i} (assistant) is empty")


def render(tokenizer: Llama3Tokenizer, messages: Sequence[dict], *, max_len: int | None = None,
           truncation: str = "reject") -> Rendered:
    """ids and answer mask of a checked conversation. Too long for max_len: rejected, or cut
    at max_len when some answer token survives the cut."""
    check_roles(messages)
    ids, mask = [tokenizer.bos_id], [0]
    for message in messages:
        header = tokenizer.encode_header(message["role"])
        content = tokenizer.encode(message["content"].strip()) + [tokenizer.eot_id]
        answer = int(message["role"] == "assistant")
        ids += header + content
        mask += [0] * len(header) + [answer] * len(content)
    if max_len is None or len(ids) <= max_len:
        return Rendered(ids, mask)
    if truncation == "truncate" and any(mask[:max_len]):
        return Rendered(ids[:max_len], mask[:max_len], truncated=True)
    raise ChatRecordError("too_long", f"{len(ids)} tokens > --max-seq-len {max_len}"
                          + ("" if truncation == "reject" else " and no answer token before it"))


def format_masked(tokenizer: Llama3Tokenizer, rendered: Rendered) -> str:
    """The rendered text with the trained spans in [[...]], for eyes and tests."""
    out, span = [], []
    for token, m in zip(rendered.ids + [None], rendered.mask + [0]):
        if m:
            span.append(token)
            continue
        if span:
            out.append("[[" + tokenizer.decode(span) + "]]")
            span = []
        if token is not None:
            out.append(tokenizer.decode([token]))
    return "".join(out)
