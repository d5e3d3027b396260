"""Rendering with the real chat templates TRL installs (trl/chat_templates/*.jinja) on the tiny tokenizer: the
prompt the student trains on is exactly the generation prompt it sees at inference, and the trained response is
exactly what it generates after it: the whole trace (reasoning and answer) once, the end of the turn, and no
`<think>` that the template prefills in the prompt."""

from pathlib import Path

import pytest
import trl

from t3s import T3SError
from t3s.config import RenderConfig
from t3s.data import Row, render_prompt, render_row, render_rows, trace_parts
from t3s.models import load_tokenizer

TEMPLATES = Path(trl.__file__).parent / "chat_templates"
THINK = (
    "<think>\nLet me add. 12 + 34 = 46. Wait, check: 4 + 2 = 6, 3 + 1 = 4.\n</think>\n\nSo the answer is \\boxed{46}."
)
RAW_R1 = "Let me add. 12 + 34 = 46.\n</think>\n\nSo the answer is \\boxed{46}."  # R1's output: <think> prefilled
PLAIN = "Let me add. 12 + 34 = 46. So the answer is \\boxed{46}."


@pytest.fixture(scope="module")
def tokenizer(tiny):
    tok = load_tokenizer(tiny / "model")
    tok.bos_token = "<|system|>"  # Llama-3's template writes a BOS token; the tiny tokenizer has none
    return tok


def _with(tok, name):
    tok.chat_template = (TEMPLATES / f"{name}.jinja").read_text()
    return tok


def _render(tok, response, **kw):
    row = Row("r", "What is 12 + 34?", response, "46", "rows.jsonl:1")
    cfg = RenderConfig(template_kwargs=kw)
    p, r = render_row(row, tok, cfg, True)
    dp, dr = tok.decode(p, skip_special_tokens=False), tok.decode(r, skip_special_tokens=False)
    # independent check 1: the prompt is the template's own generation prompt, character for character
    gen_prompt = tok.apply_chat_template(
        [{"role": "user", "content": row.prompt}], tokenize=False, add_generation_prompt=True, **kw
    )
    assert dp == gen_prompt
    # independent check 2: prompt + response hold every part of the trace exactly once
    for part in trace_parts(response):
        assert (dp + dr).count(part) == 1, part
    return dp, dr


ALL = sorted(p.stem for p in TEMPLATES.glob("*.jinja"))


# Templates written for image messages: they cannot render a text-only row (refused, with a message).
MULTIMODAL = ("idefics3", "llava_next", "smolvlm")
# Thinking-mode templates that would render a trace without <think> as a non-thinking answer (refused).
THINKING = {
    "glm4moe",
    "nemotron_3_5_lightning",
    "nemotron_3_nano",
    "nemotron_3_super",
    "nemotron_3_ultra",
    "qwen3",
    "qwen3_5_think",
    "qwen3_6",
    "qwen3_8",
}


def _refuses(name: str, response: str) -> str | None:
    """The refusal a template must give for this response, or None when it must render it."""
    if name.startswith(MULTIMODAL):
        return "chat template"
    if response == PLAIN and name.removesuffix("_training") in THINKING:
        return "non-thinking answer"
    return None


@pytest.mark.parametrize("name", ALL)
def test_every_trl_template_renders_the_trace_once_or_refuses_clearly(tokenizer, name):
    for response in (THINK, PLAIN):
        want = _refuses(name, response)
        if want is None:
            _render(_with(tokenizer, name), response)
        else:
            with pytest.raises(T3SError, match=want) as e:
                _render(_with(tokenizer, name), response)
            assert "rows.jsonl:1" in str(e.value)


@pytest.mark.parametrize(
    "name, end, prefilled",
    [
        ("qwen3", "<|im_end|>\n", False),
        ("qwen3_8", "<|im_end|>\n", True),
        ("qwen3_5_think", "<|im_end|>\n", True),
        ("qwen2_5", "<|im_end|>\n", False),
        ("deepseek_r1_distill", "<｜end▁of▁sentence｜>", True),
        ("deepseekv3", "<｜end▁of▁sentence｜>", True),
        ("nemotron_3_nano", "<|im_end|>\n", True),
        ("llama3", "<|eot_id|>", False),
        ("llama3_1", "<|eot_id|>", False),
        ("gemma3", "<end_of_turn>\n", False),
        ("gptoss", "<|return|>", False),
        ("phi3", "<|end|>\n<|eos|>", False),
        ("glm4moe", "<|eos|>", False),
    ],
)
def test_reasoning_trace_is_what_the_model_generates(tokenizer, name, end, prefilled):
    """A <think> trace: the response ends the turn as the template does; where the generation prompt prefills
    `<think>\\n` (DeepSeek-R1-distill, Qwen3.5+, Nemotron) the response starts after it, never with a second one."""
    dp, dr = _render(_with(tokenizer, name), THINK)
    assert dr.endswith(end)
    assert dp.endswith("<think>\n") is prefilled
    assert dr.count("<think>") == (0 if prefilled else 1) and dr.count("</think>") == 1
    if prefilled:
        assert dr.startswith("Let me add.")


def test_deepseek_r1_raw_output_without_the_prefilled_think(tokenizer):
    """R1 writes no <think> itself (the prompt prefills it): such traces train as they are."""
    dp, dr = _render(_with(tokenizer, "deepseek_r1_distill"), RAW_R1)
    assert dp.endswith("<｜Assistant｜><think>\n") and dr == RAW_R1 + "<｜end▁of▁sentence｜>"


def test_qwen3_thinking_mode_refuses_a_trace_without_think(tokenizer):
    """Qwen3 would render it after an empty think block: a non-thinking answer, silently. Refused, with the way
    out; in non-thinking mode the empty block is in the prompt and the trace trains as written."""
    with pytest.raises(T3SError, match="non-thinking answer"):
        _render(_with(tokenizer, "qwen3"), PLAIN)
    dp, dr = _render(_with(tokenizer, "qwen3"), PLAIN, enable_thinking=False)
    assert dp.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n") and dr == PLAIN + "<|im_end|>\n"


def test_render_report_counts_rewritten_turns(tokenizer):
    tok = _with(tokenizer, "deepseek_r1_distill")
    rows = [Row(f"r{i}", f"What is {i} + 1?", THINK, str(i + 1), f"rows.jsonl:{i + 1}") for i in range(3)]
    _, rep = render_rows(rows, tok, RenderConfig())
    assert rep.rewritten == 3 and "rendered after the generation prompt" in str(rep)
    _, rep = render_rows(rows, _with(tokenizer, "qwen2_5"), RenderConfig())
    assert rep.rewritten == 0


def test_probe_and_training_see_the_same_prompt(tokenizer):
    """Generation (probe, eval) renders the prompt with render_prompt; training's prompt ids are the same ids."""
    tok = _with(tokenizer, "deepseek_r1_distill")
    row = Row("r", "What is 12 + 34?", THINK, "46", "rows.jsonl:1")
    p, _ = render_row(row, tok, RenderConfig(), True)
    assert render_prompt(row, tok, RenderConfig(), True)[0] == p


REASONING, ANSWER = "Let me add. 12 + 34 = 46.", "So the answer is \\boxed{46}."


def _teacher_output(tok, name) -> tuple[str, str]:
    """(what an endpoint without a reasoning parser returns, what `t3s traces` stores from a local HF teacher) for
    a teacher with this template: a thinking model continues its generation prompt, so where the prompt prefills
    `<think>` it generates only the rest of the block."""
    from t3s.data import think_prefill

    prompt = _with(tok, name).apply_chat_template(
        [{"role": "user", "content": "What is 12 + 34?"}], tokenize=False, add_generation_prompt=True
    )
    pre = think_prefill(prompt)
    generated = f"{REASONING}\n</think>\n\n{ANSWER}" if pre else f"<think>\n{REASONING}\n</think>\n\n{ANSWER}"
    return generated, pre + generated


def test_every_teacher_student_template_pair_renders_a_balanced_think_block(tokenizer):
    """R1-distill / QwQ / Qwen3.5 teachers generate after a prefilled `<think>\\n`: their raw text closes a block it
    never opened. For every pair of TRL's templates (teacher's output, student's rendering, both directions), the
    student's generation prompt + response holds exactly one <think> before exactly one </think>, and the
    reasoning and the answer once each. Teachers are grouped by the text they produce (the only thing of theirs
    the student sees), so every pair is covered with one rendering per distinct trace and student."""
    from t3s.traces import training_response

    usable = [n for n in ALL if not n.startswith(MULTIMODAL)]
    traces: dict[str, list[str]] = {}
    for teacher in usable:
        raw, stored = _teacher_output(tokenizer, teacher)
        for text in (raw, stored):  # an endpoint's text goes through training_response; stored rows are as is
            for response in (training_response({"text": text, "reasoning": None}, ""), text):
                traces.setdefault(response, []).append(teacher)
    assert any(not t.startswith("<think>") for t in traces)  # the raw R1 form is among them
    for student in usable:
        for response, teachers in traces.items():
            dp, dr = _render(_with(tokenizer, student), response)
            seq = dr if not dp.endswith(("<think>\n", "<think>")) else "<think>" + dr
            what = f"teacher {teachers[0]} (+{len(teachers) - 1}) -> student {student}: {dr!r}"
            assert seq.count("<think>") == 1 and seq.count("</think>") == 1, what
            assert seq.index("<think>") < seq.index(REASONING) < seq.index("</think>") < seq.index(ANSWER), what
