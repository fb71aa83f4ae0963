"""Tool calling in Qwen3.5's XML convention (Holo3): the <tool_call> framing of tool_format.py with
each call written as

    <tool_call>
    <function=NAME>
    <parameter=KEY>
    VALUE
    </parameter>
    </function>
    </tool_call>

Values are untyped text (the chat template writes objects and arrays as JSON, anything else as its
text), so a call's arguments are typed by its function's parameter schema as vLLM's `qwen3_coder`
parser does. The tools reach the prompt as a `# Tools` system block, before the system message.
"""

import ast
import json
import math
import re

from .constrain import JSON_OPTIONS, Grammar, Grammars
from .tool_format import OPEN, CLOSE, ParsedCall, ToolFormat, calls_grammar, closed_objects, render

FUNCTION = re.compile(r"<function=([^>\n]+)>(.*)</function>", re.DOTALL)
PARAMETER = re.compile(r"<parameter=([^>\n]+)>(.*?)</parameter>", re.DOTALL)
NAME_TEXT = r"[^>\n]+"  # a parameter's name where the schema lists none
VALUE_END = "\n</parameter>\n"

# The Qwen3.5 chat template's system turn with tools (its text up to the system message).
TOOLS_HEADER = "# Tools\n\nYou have access to the following functions:\n\n<tools>"
TOOLS_FOOTER = (
    "\n</tools>\n\nIf you choose to call a function ONLY reply in the following format with NO suffix:\n\n"
    "<tool_call>\n<function=example_function_name>\n<parameter=example_parameter_1>\nvalue_1\n</parameter>\n"
    "<parameter=example_parameter_2>\nThis is the value for the second parameter\nthat can span\nmultiple lines\n"
    "</parameter>\n</function>\n</tool_call>\n\n<IMPORTANT>\nReminder:\n- Function calls MUST follow the "
    "specified format: an inner <function=...></function> block must be nested within <tool_call></tool_call> "
    "XML tags\n- Required parameters MUST be specified\n- You may provide optional reasoning for your function "
    "call in natural language BEFORE the function call, but NOT after\n- If there is no function call available, "
    "answer the question like normal with your current knowledge and do not tell the user about function "
    "calls\n</IMPORTANT>")


def arguments_object(arguments: str | dict) -> dict:
    """A call's arguments as the mapping the template iterates (OpenAI sends them as JSON text)."""
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError as error:
            raise ValueError(f"tool call arguments are not JSON: {error}") from None
    if not isinstance(arguments, dict):
        raise ValueError("tool call arguments must be a JSON object")
    return arguments


def value_text(value) -> str:
    """A parameter's value as the template writes it: objects and arrays as JSON, the rest as Jinja's
    `string` filter (Python's str: True, None)."""
    return json.dumps(value, ensure_ascii=False) if isinstance(value, (dict, list)) else str(value)


def call_text(name: str, arguments: str | dict) -> str:
    parameters = "".join(f"<parameter={key}>\n{value_text(value)}\n</parameter>\n"
                         for key, value in arguments_object(arguments).items())
    return f"{OPEN}\n<function={name}>\n{parameters}</function>\n{CLOSE}"


def system_with_tools(system: str | None, tools: list[dict]) -> str:
    """The tools block first, then the system message (stripped, as the template does)."""
    block = TOOLS_HEADER + "".join("\n" + json.dumps(tool, ensure_ascii=False) for tool in tools) + TOOLS_FOOTER
    return block + ("\n\n" + system.strip() if system and system.strip() else "")


def render_xml(messages: list[dict], tools: list[dict] | None) -> list[dict]:
    return render(messages, tools, system=system_with_tools, call=call_text, after_content="\n\n")


def parameter_schemas(tools: list[dict], name: str) -> dict | None:
    """The named function's parameter schemas by parameter name; None when no tool has that name."""
    for tool in tools:
        if tool["function"]["name"] == name:
            return (tool["function"].get("parameters") or {}).get("properties") or {}
    return None


def schema_type(schema) -> str:
    """The JSON type a value is read as: the schema's, the first besides null of a list; text when none."""
    kind = schema.get("type") if isinstance(schema, dict) else None
    if isinstance(kind, list):
        kind = next((entry for entry in kind if entry != "null"), "null")
    return kind if isinstance(kind, str) else "string"


def typed(value: str, schema) -> object:
    """A parameter's text as the value its schema types it (vLLM's qwen3_coder rules): `null` is None;
    integers and numbers parsed (an integral number as an integer), booleans by `true`; objects and
    arrays (and other types) as JSON, else as a Python literal; text that does not parse stays text."""
    if value.lower() == "null":
        return None
    kind = schema_type(schema)
    if kind == "string":
        return value
    if kind == "integer":
        try:
            return int(value)
        except ValueError:
            return value
    if kind == "number":
        try:
            number = float(value)
        except ValueError:
            return value
        if not math.isfinite(number):  # no JSON for it
            return value
        return int(number) if number.is_integer() else number
    if kind == "boolean":
        return value.lower() == "true"
    if kind in ("object", "array"):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            pass
    try:
        literal = ast.literal_eval(value)
        json.dumps(literal)  # a literal JSON cannot carry (a set, bytes) stays text
        return literal
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return value


def read_call(body: str, tools: list[dict]) -> ParsedCall | None:
    """A call's text between the tags: one function of these tools whose body is only parameters; None
    (it stays text) otherwise. Each value loses the newline after its opening tag and the one before
    its closing tag."""
    match = FUNCTION.fullmatch(body.strip())
    if match is None:
        return None
    name, inside = match.group(1), match.group(2)
    schemas = parameter_schemas(tools, name)
    if schemas is None:
        return None
    arguments, end = {}, 0
    for parameter in PARAMETER.finditer(inside):
        if inside[end:parameter.start()].strip():
            return None
        end = parameter.end()
        value = parameter.group(2)
        value = value[1:] if value.startswith("\n") else value
        value = value[:-1] if value.endswith("\n") else value
        arguments[parameter.group(1)] = typed(value, schemas.get(parameter.group(1)))
    if inside[end:].strip():
        return None
    return ParsedCall.new(name, json.dumps(arguments, ensure_ascii=False))


def xml_call_grammar(grammars: Grammars, tools: list[dict], *, parallel: bool) -> Grammar:
    """Grammar of an answer made of XML calls to these functions (one, or several when parallel):
    each function's parameters in its schema's order, the required ones always, none it does not
    list (any, as text, when it lists none or allows more by additionalProperties), each value held
    to its schema with its objects closed (tool_format.closed_objects)."""
    rules, functions = [], []
    for number, tool in enumerate(tools):
        function = tool["function"]
        parameters = function.get("parameters") or {}
        properties = parameters.get("properties") or {}
        required = set(parameters.get("required") or [])
        items = []
        for index, (key, schema) in enumerate(properties.items()):
            rule = f"v_{number}_{index}"
            rules.append(value_rule(rule, closed_objects(schema)))
            item = f'"<parameter={escape(key)}>\\n" {rule}'
            items.append(f"({item})" if key in required else f"({item})?")
        if not properties or parameters.get("additionalProperties", False) is not False:
            rules.append(f"any_{number}: (\"<parameter=\" /{NAME_TEXT}/ \">\\n\" TEXT_VALUE)*")
            items.append(f"any_{number}")
        functions.append(f"f_{number}")
        rules.append(f'f_{number}: "<function={escape(function["name"])}>\\n" {" ".join(items)} "</function>"')
    rules.append(f"TEXT_VALUE: {text_value({})}")
    return calls_grammar(grammars, f"body: {' | '.join(functions)}\n" + "\n".join(rules) + "\n", parallel=parallel,
                         text_ends=(VALUE_END,))


def value_rule(rule: str, schema) -> str:
    """A parameter's value and the closing tag after it: text for a string (or untyped) schema, else
    the schema's JSON, whose text the parser types back."""
    if schema_type(schema) == "string":
        # A regex intersection (text_value) is a terminal's, and terminals are named in capitals.
        return f"{rule}: {rule.upper()}\n{rule.upper()}: {string_value(schema if isinstance(schema, dict) else {})}"
    schema = {**schema, "x-guidance": JSON_OPTIONS}
    return f'{rule}: {rule}_json "\\n</parameter>\\n"\n{rule}_json: %json {json.dumps(schema)}'


def string_value(schema: dict) -> str:
    """A text value: one of its enum or its const when given (spelled as written), else text within
    its length bounds (its pattern and format are not held)."""
    if "const" in schema or "enum" in schema:
        options = [schema["const"]] if "const" in schema else schema["enum"]
        return " | ".join(json.dumps(value_text(option) + "\n</parameter>\n") for option in options)
    return text_value(schema)


def text_value(schema: dict) -> str:
    """One lexeme: text (no `</parameter>` in it, nor `null`, which reads as None unless the schema
    allows null), then `\\n</parameter>\\n`."""
    low, high = schema.get("minLength", 0), schema.get("maxLength", "")
    lexeme = f"/(?s:.{{{low},{high}}})\\n<\\/parameter>\\n/ & ~/(?s:.*<\\/parameter>.{{2,}})/"
    kind = schema.get("type")
    if not (kind == "null" or isinstance(kind, list) and "null" in kind):
        lexeme += " & ~/(?i:null)\\n<\\/parameter>\\n/"
    return lexeme


def escape(text: str) -> str:
    """Text inside a Lark string literal."""
    return json.dumps(text)[1:-1]


XML = ToolFormat(opening=OPEN, render=render_xml, read_call=read_call, grammar=xml_call_grammar,
                 template_arguments=arguments_object)
