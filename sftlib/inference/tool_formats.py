"""Tool-call formats: how each family of chat templates writes a call, and the parser that reads it back.

A model writes its calls the way its chat template rendered them in training, so the parser is chosen
from the template (`for_template`): a known probe call is rendered through it, and the format whose
parser reads exactly that call back is the one. A template whose calls no parser reads, or that renders
no call at all, is refused there with an error naming what it writes: never scored 0 later.

`FORMATS` holds them: Hermes `<tool_call>` JSON (Qwen2.5/3), Qwen3.5's XML, GLM-4.5's arg tags, Llama
3.1's JSON, Mistral's `[TOOL_CALLS]`, gpt-oss's harmony channels, Gemma 4's, LFM2's pythonic lists,
Muse's ATEM and DeepSeek-V3's; docs/tool-calling.md lists which bundled template writes which.
Formats that write values as bare text (`qwen_xml`, `glm4`, `atem`) are typed back by the tool's JSON
schema: a `string` parameter stays text, others read as JSON (`3`, `true`, `[1, 2]`).
"""

from __future__ import annotations

import ast
import dataclasses
import json
import os
import re
from collections.abc import Callable

from sftlib.data import chat
from sftlib.errors import BadToolCall, DropExample, SftlibError

Schemas = dict[str, dict[str, str]]  # tool name -> parameter -> its JSON-schema type


@dataclasses.dataclass(frozen=True)
class ToolFormat:
    """One way of writing tool calls. `block` matches one call region (a format may hold several calls
    in one); `read` turns a match into flat calls ({"name", "arguments", "id"?}); `opener` matches the
    start of a region, so a region left unfinished (cut off, or never closed) is told from no call."""

    name: str
    writes: str
    block: re.Pattern
    read: Callable[[re.Match, Schemas], list[dict]]
    opener: re.Pattern
    final: re.Pattern | None = None  # where the answer is, for formats with channels (gpt-oss, ATEM)

    def calls(self, raw: str, schemas: Schemas | None = None) -> list[dict]:
        """The calls in `raw` generated text, in the templates' shape (sftlib.data.chat.tool_call).
        Raises BadToolCall for the first that can't be read, or for a region left unfinished."""
        calls = []
        for match in self.block.finditer(raw):
            for call in self.read(match, schemas or {}):
                shaped = {"function": {"name": call.get("name"), "arguments": call.get("arguments", {})}}
                calls.append(chat.tool_call({**shaped, "id": call["id"]} if call.get("id") else shaped))
        if self.opener.search(self.block.sub("", raw)):
            raise BadToolCall(f"an unfinished call: ...{raw[-80:]!r}")
        return calls

    def outside(self, raw: str) -> str:
        """What `raw` says beside its calls: the answer of a turn without calls, the content (reasoning
        included) of one with calls; special tokens are still in it."""
        if self.final is not None and (found := self.final.findall(raw)):
            return found[-1]
        return self.block.sub("", raw)


def _json(text: str, what: str) -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadToolCall(f"{what} is not JSON ({exc.msg}): {text.strip()[:80]!r}") from None


def _typed(text: str, kind: str | None) -> object:
    """A value a template wrote as bare text, typed back: a `string` parameter stays text; another
    reads as JSON or a Python literal (`True`, as jinja writes a bool); unknown kinds only when that
    does not make a string of it."""
    if kind == "string":
        return text
    for read in (json.loads, ast.literal_eval):
        try:
            value = read(text)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
        if kind is not None or not isinstance(value, str):
            return value
    return text


def _hermes(match: re.Match, schemas: Schemas) -> list[dict]:
    return [_json(match.group(1).strip(), "a <tool_call> body")]


def _qwen_xml(match: re.Match, schemas: Schemas) -> list[dict]:
    function = re.fullmatch(r"\s*<function=([^>\n]+)>(.*?)</function>\s*", match.group(1), re.S)
    if function is None:
        raise BadToolCall(f"no <function=NAME>...</function> in the call: {match.group(1)[:80]!r}")
    name = function.group(1).strip()
    parameters = re.findall(r"<parameter=([^>\n]+)>\n?(.*?)\n?</parameter>", function.group(2), re.S)
    return [{"name": name, "arguments": {k: _typed(v, schemas.get(name, {}).get(k)) for k, v in parameters}}]


def _glm4(match: re.Match, schemas: Schemas) -> list[dict]:
    body = match.group(1)
    name = body.split("<arg_key>", 1)[0].strip()
    if not name:
        raise BadToolCall(f"no function name in the call: {body[:80]!r}")
    pairs = re.findall(r"<arg_key>(.*?)</arg_key>\s*<arg_value>(.*?)</arg_value>", body, re.S)
    return [{"name": name, "arguments": {k: _typed(v, schemas.get(name, {}).get(k)) for k, v in pairs}}]


def _llama3_json(match: re.Match, schemas: Schemas) -> list[dict]:
    """One JSON object, or several joined by `;` (as Llama 3.2 may write parallel calls)."""
    text, decoder, calls = match.group(1).removeprefix("<|python_tag|>").strip(), json.JSONDecoder(), []
    while text:
        try:
            call, end = decoder.raw_decode(text)
        except json.JSONDecodeError as exc:
            raise BadToolCall(f"a Llama 3 call is not JSON ({exc.msg}): {text[:80]!r}") from None
        if not isinstance(call, dict):
            raise BadToolCall(f"a Llama 3 call is {type(call).__name__}, not an object: {text[:80]!r}")
        calls.append(
            {"name": call.get("name"), "arguments": call.get("parameters", call.get("arguments", {}))}
        )
        text = text[end:].strip().removeprefix(";").strip()
    return calls


def _mistral(match: re.Match, schemas: Schemas) -> list[dict]:
    """`[TOOL_CALLS]` then a JSON list (v3), or `NAME[ARGS]{...}` / `NAME[CALL_ID]ID[ARGS]{...}` (v11+)."""
    body = match.group(1).strip()
    if body.startswith("["):
        calls = _json(body, "a [TOOL_CALLS] list")
        if not isinstance(calls, list):
            raise BadToolCall(f"[TOOL_CALLS] is not followed by a list: {body[:80]!r}")
        return calls
    named = re.fullmatch(r"([^\[\s]+)(?:\[CALL_ID\](\w+))?\[ARGS\](.*)", body, re.S)
    if named is None:
        raise BadToolCall(f"[TOOL_CALLS] is followed by neither a list nor NAME[ARGS]: {body[:80]!r}")
    call = {"name": named.group(1), "arguments": _json(named.group(3), "[ARGS]")}
    return [{**call, "id": named.group(2)} if named.group(2) else call]


def _harmony(match: re.Match, schemas: Schemas) -> list[dict]:
    return [
        {"name": match.group(1), "arguments": _json(match.group(2), f"the arguments of {match.group(1)}")}
    ]


def _gemma4(match: re.Match, schemas: Schemas) -> list[dict]:
    return [{"name": match.group(1), "arguments": _GemmaValue(match.group(2)).read()}]


class _GemmaValue:
    """Gemma 4's argument syntax: `{key:value,...}`, strings between `<|"|>` delimiters, keys bare or
    delimited, numbers, `true`/`false`/`null` bare, lists in brackets."""

    QUOTE = '<|"|>'

    def __init__(self, text: str):
        self.text, self.at = text, 0

    def read(self) -> object:
        value = self.value()
        if self.text[self.at :].strip():
            raise BadToolCall(f"Gemma arguments end early: {self.text[:80]!r}")
        return value

    def value(self) -> object:
        text = self.text
        if text.startswith(self.QUOTE, self.at):
            end = text.find(self.QUOTE, self.at + len(self.QUOTE))
            if end < 0:
                raise BadToolCall(f"an unclosed string in Gemma arguments: {text[:80]!r}")
            value, self.at = text[self.at + len(self.QUOTE) : end], end + len(self.QUOTE)
            return value
        if text.startswith("{", self.at):
            return self.sequence("}", keyed=True)
        if text.startswith("[", self.at):
            return self.sequence("]", keyed=False)
        bare = re.compile(r"[^,}\]]*").match(text, self.at)
        self.at = bare.end()
        word = bare.group(0).strip()
        literal = {"true": True, "false": False, "null": None}
        return literal[word] if word in literal else _typed(word, None)

    def sequence(self, close: str, keyed: bool) -> dict | list:
        self.at += 1
        items: dict | list = {} if keyed else []
        while not self.text.startswith(close, self.at):
            if keyed:
                key = self.key()
                items[key] = self.value()
            else:
                items.append(self.value())
            if self.text.startswith(",", self.at):
                self.at += 1
            elif not self.text.startswith(close, self.at):
                raise BadToolCall(f"Gemma arguments: expected ',' or {close!r}: {self.text[:80]!r}")
        self.at += 1
        return items

    def key(self) -> str:
        if self.text.startswith(self.QUOTE, self.at):
            key = self.value()
        else:
            bare = re.compile(r"[^:]*").match(self.text, self.at)
            key, self.at = bare.group(0).strip(), bare.end()
        if not self.text.startswith(":", self.at):
            raise BadToolCall(f"Gemma arguments: a key without ':': {self.text[:80]!r}")
        self.at += 1
        return str(key)


def _pythonic(match: re.Match, schemas: Schemas) -> list[dict]:
    """`[name(k='v', n=3), other()]`: read by Python's parser, values as literals (never run)."""
    try:
        tree = ast.parse(match.group(1).strip(), mode="eval").body
    except SyntaxError as exc:
        raise BadToolCall(
            f"a pythonic call list does not parse ({exc.msg}): {match.group(1)[:80]!r}"
        ) from None
    calls = []
    for node in tree.elts if isinstance(tree, ast.List) else [tree]:
        if not isinstance(node, ast.Call) or node.args:
            raise BadToolCall(f"not a call with keyword arguments: {ast.unparse(node)[:80]!r}")
        try:
            arguments = {k.arg: ast.literal_eval(k.value) for k in node.keywords}
        except ValueError:
            raise BadToolCall(f"an argument that is not a literal: {ast.unparse(node)[:80]!r}") from None
        calls.append({"name": ast.unparse(node.func), "arguments": arguments})
    return calls


def _atem(match: re.Match, schemas: Schemas) -> list[dict]:
    calls = []
    for name, body in re.findall(r'<atem:invoke name="([^"]+)">(.*?)</atem:invoke>', match.group(1), re.S):
        pairs = re.findall(r'<atem:parameter name="([^"]+)">(.*?)</atem:parameter>', body, re.S)
        calls.append(
            {"name": name, "arguments": {k: _typed(v, schemas.get(name, {}).get(k)) for k, v in pairs}}
        )
    if not calls:
        raise BadToolCall(f"no <atem:invoke> in the function calls: {match.group(1)[:80]!r}")
    return calls


def _deepseek_v3(match: re.Match, schemas: Schemas) -> list[dict]:
    name = match.group(1).strip()
    return [{"name": name, "arguments": _json(match.group(2), f"the arguments of {name}")}]


TOOL_CALL_BLOCK = re.compile(r"<tool_call>(.*?)</tool_call>", re.S)
TOOL_CALL_OPENER = re.compile(r"<tool_call>")

FORMATS = (
    ToolFormat("hermes", '<tool_call>{"name": ..., "arguments": {...}}</tool_call>', TOOL_CALL_BLOCK, _hermes, TOOL_CALL_OPENER),
    ToolFormat("qwen_xml", "<tool_call><function=NAME><parameter=K>V</parameter></function></tool_call>", TOOL_CALL_BLOCK, _qwen_xml, TOOL_CALL_OPENER),
    ToolFormat("glm4", "<tool_call>NAME<arg_key>K</arg_key><arg_value>V</arg_value></tool_call>", TOOL_CALL_BLOCK, _glm4, TOOL_CALL_OPENER),
    ToolFormat(
        "llama3_json",
        '{"name": ..., "parameters": {...}} (after <|python_tag|> or alone)',
        re.compile(r"\A\s*(<\|python_tag\|>.*?|\{.*\})\s*(?=<\|eot_id\|>|<\|eom_id\|>|\Z)", re.S),
        _llama3_json,
        re.compile(r"\A\s*(?:<\|python_tag\|>|\{)"),
    ),
    ToolFormat(
        "mistral",
        '[TOOL_CALLS][{"name": ..., "arguments": {...}}] or [TOOL_CALLS]NAME[ARGS]{...}',
        re.compile(r"\[TOOL_CALLS\](.*?)(?=\[TOOL_CALLS\]|</s>|\Z)", re.S),
        _mistral,
        re.compile(r"\[TOOL_CALLS\]"),
    ),
    ToolFormat(
        "harmony",
        " to=functions.NAME<|channel|>commentary json<|message|>{...}<|call|>",
        re.compile(
            r"to=functions\.([^\s<]+)\s*(?:<\|channel\|>[^<]*)?(?:<\|constrain\|>[^<]*)?<\|message\|>(.*?)"
            r"(?:<\|call\|>|\Z)",
            re.S,
        ),
        _harmony,
        re.compile(r"to=functions\."),
        final=re.compile(r"<\|channel\|>final<\|message\|>(.*?)(?:<\|return\|>|<\|end\|>|\Z)", re.S),
    ),
    ToolFormat(
        "gemma4",
        '<|tool_call>call:NAME{k:<|"|>v<|"|>,n:3}<tool_call|>',
        re.compile(r"<\|tool_call>call:([^{\s]+)(\{.*?\})<tool_call\|>", re.S),
        _gemma4,
        re.compile(r"<\|tool_call>"),
    ),
    ToolFormat(
        "pythonic",
        "<|tool_call_start|>[NAME(k='v', n=3)]<|tool_call_end|>",
        re.compile(r"<\|tool_call_start\|>(.*?)<\|tool_call_end\|>", re.S),
        _pythonic,
        re.compile(r"<\|tool_call_start\|>"),
    ),
    ToolFormat(
        "atem",
        '<atem:function_calls><atem:invoke name="NAME"><atem:parameter name="K">V</atem:parameter>...',
        re.compile(r"(?: to=[^<\s]*(?:<\|message\|>)?)?<atem:function_calls>(.*?)</atem:function_calls>", re.S),
        _atem,
        re.compile(r"<atem:function_calls>"),
        final=re.compile(r"to=user<\|message\|>(.*?)(?:<\|eot\|>|<\|eom\|>|\Z)", re.S),
    ),
    ToolFormat(
        "deepseek_v3",
        "<｜tool▁call▁begin｜>function<｜tool▁sep｜>NAME\\n```json\\n{...}\\n```<｜tool▁call▁end｜>",
        re.compile(r"<｜tool▁call▁begin｜>(?:function)?<｜tool▁sep｜>([^\n]+)\n```(?:json)?\n(.*?)\n```<｜tool▁call▁end｜>", re.S),
        _deepseek_v3,
        re.compile(r"<｜tool▁call▁begin｜>"),
    ),
)  # fmt: skip

# The probe `for_template` renders: a tool with a string and an integer parameter, and one call to it.
# The id is 9 letters and digits, the only shape Mistral's templates accept.
PROBE_TOOL = {
    "type": "function",
    "function": {
        "name": "sftlib_probe",
        "description": "A probe of how the chat template writes a tool call.",
        "parameters": {
            "type": "object",
            "properties": {"text": {"type": "string"}, "count": {"type": "integer"}},
            "required": ["text", "count"],
        },
    },
}
PROBE_CALL = {"name": "sftlib_probe", "arguments": {"text": "probe value", "count": 2}}


def schemas_of(tools: list | None) -> Schemas:
    """Each tool's parameter types, from its JSON schema (OpenAI shape or flat)."""
    schemas = {}
    for tool in tools or []:
        function = tool.get("function", tool) if isinstance(tool, dict) else {}
        properties = ((function or {}).get("parameters") or {}).get("properties") or {}
        if isinstance(function.get("name"), str):
            schemas[function["name"]] = {
                k: v.get("type")
                for k, v in properties.items()
                if isinstance(v, dict) and isinstance(v.get("type"), str)
            }
    return schemas


def probe_rendering(tokenizer, template_kwargs: dict | None = None) -> str:
    """What the chat template renders as generated for the probe call (after the generation prompt).
    Templates that take arguments only as a JSON string (deepseekv3) get them so."""
    from sftlib.data import rendering

    context = {"tools": [PROBE_TOOL], **(template_kwargs or {})}
    prompt = [{"role": "user", "content": "Call the probe."}]
    errors = []
    for arguments in (PROBE_CALL["arguments"], json.dumps(PROBE_CALL["arguments"])):
        call = {"id": "sftprobe1", "type": "function", "function": {**PROBE_CALL, "arguments": arguments}}
        turn = {"role": "assistant", "content": "", "tool_calls": [call]}
        try:
            given = rendering.render(tokenizer, prompt, True, context)
            answered = rendering.render(tokenizer, [*prompt, turn], False, context)
        except DropExample as exc:
            errors.append(exc.detail)
            continue
        return answered[len(os.path.commonprefix([given, answered])) :]
    raise SftlibError(
        f"the chat template raises on a tool call ({errors[-1]}), so the tool loop can't run with it.",
        "choose a template that renders tool calls (model.chat_template), e.g. qwen2_5 or llama3_1.",
    )


def for_template(tokenizer, template_kwargs: dict | None = None) -> ToolFormat:
    """The format the tokenizer's chat template writes tool calls in: the first whose parser reads the
    probe call back exactly from the template's own rendering. Raises SftlibError, naming what the
    template writes, when the template renders no call or no parser reads it."""
    if tokenizer.chat_template is None:
        raise SftlibError(
            "the tokenizer has no chat template, so it writes no tool calls for the loop to read.",
            "set model.chat_template to a template that renders tool calls, e.g. qwen2_5.",
        )
    written = probe_rendering(tokenizer, template_kwargs)
    if PROBE_CALL["name"] not in written:
        raise SftlibError(
            "the chat template does not render an assistant turn's tool calls, so a model trained on it "
            "writes none for the loop to read.",
            "choose a template that renders tool calls (model.chat_template), e.g. qwen2_5, qwen3 or llama3_1.",
        )
    schemas = schemas_of([PROBE_TOOL])
    for fmt in FORMATS:
        try:
            calls = fmt.calls(written, schemas)
        except BadToolCall:
            continue
        if [c["function"] for c in calls] == [PROBE_CALL]:  # name and arguments, exactly
            return fmt
    known = "; ".join(f"{f.name}: {f.writes}" for f in FORMATS)
    raise SftlibError(
        f"the chat template writes tool calls as {written.strip()[:160]!r}, a format sftlib has no parser "
        f"for (it reads {known}).",
        "choose a template in one of these formats (model.chat_template), or run notebook 05 without TOOLS.",
    )
