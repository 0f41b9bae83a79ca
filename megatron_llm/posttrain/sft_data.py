"""SFT data: chat JSONL (`{"messages": [{"role", "content"}, ...]}`) to encoded conversations."""

from __future__ import annotations

from pathlib import Path

from megatron_llm.posttrain.chat import ChatTemplate, ChatTokenizer, EncodedChat, encode_chat, message_problem
from megatron_llm.posttrain.records import DataReport, read_jsonl


def load_conversations(path: str | Path, template: ChatTemplate, tokenizer: ChatTokenizer, seq_length: int,
                       strict: bool = False) -> tuple[list[EncodedChat], DataReport]:
    """Every usable conversation of a chat JSONL file, in file order, and the report of rejected ones.

    A conversation fits when its tokens (BOS and closing EOD included) are at most `seq_length + 1`:
    inputs and labels are the same tokens shifted by one.
    """
    report = DataReport(str(path), strict=strict)
    conversations = []
    for line, record in read_jsonl(path, report):
        problem = message_problem(record.get("messages"))
        if problem:
            report.reject(line, *problem)
            continue
        try:
            encoded = encode_chat(record["messages"], template, tokenizer)
        except ValueError as error:
            report.reject(line, str(error), "template error")
            continue
        if len(encoded) > seq_length + 1:
            report.reject(line, f"conversation is {len(encoded)} tokens, longer than data.seq_length+1 = "
                          f"{seq_length + 1}", "longer than the context")
            continue
        if not any(encoded.trained[1:]):
            report.reject(line, "no assistant token left after tokenization", "empty assistant turn")
            continue
        conversations.append(encoded)
        report.used += 1
    return conversations, report
