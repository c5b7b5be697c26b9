"""The official `openai` Python client against a running `cord serve` (started by
crates/cord-serve/tests/openai_client.rs on two tiny generated models).

Usage: openai_client.py BASE_URL API_KEY LLAMA_MODEL QWEN_MODEL
Exits non-zero (an AssertionError or the client's exception) on the first mismatch.
"""

import sys

import openai

base, key, llama, qwen = sys.argv[1:5]
client = openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0)

ids = [m.id for m in client.models.list()]
assert ids == [llama, qwen], ids
assert client.models.retrieve(qwen).id == qwen

messages = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is 6 * 7?"},
]

# Chat, and seed reproducibility.
for model in (llama, qwen):
    a = client.chat.completions.create(
        model=model, messages=messages, max_tokens=10, temperature=0.8, seed=7
    )
    assert a.object == "chat.completion", a
    assert a.model == model
    choice = a.choices[0]
    assert choice.message.role == "assistant"
    assert choice.finish_reason in ("stop", "length"), choice.finish_reason
    assert 1 <= a.usage.completion_tokens <= 10, a.usage
    assert a.usage.total_tokens == a.usage.prompt_tokens + a.usage.completion_tokens
    b = client.chat.completions.create(
        model=model, messages=messages, max_tokens=10, temperature=0.8, seed=7
    )
    assert b.choices[0].message.content == choice.message.content, (a, b)
    others = {
        client.chat.completions.create(
            model=model, messages=messages, max_tokens=10, temperature=0.8, seed=s
        ).choices[0].message.content
        for s in (8, 9, 10)
    }
    assert others != {choice.message.content}, "every seed gave the same text"

    # Streaming gives the same text, chunk by chunk, with usage at the end.
    chunks = list(
        client.chat.completions.create(
            model=model,
            messages=messages,
            max_tokens=10,
            temperature=0.8,
            seed=7,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == choice.message.content, (text, choice.message.content)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == a.usage.completion_tokens
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [choice.finish_reason], finishes

    # Chat log-probs.
    lp = client.chat.completions.create(
        model=model, messages=messages, max_tokens=6, temperature=0.8, seed=7,
        logprobs=True, top_logprobs=2,
    ).choices[0].logprobs
    assert lp.content, lp
    for t in lp.content:
        assert t.logprob <= 0.0 and len(t.top_logprobs) == 2

# Completion with logprobs + echo: the prompt's token log-probs (how harnesses score).
prompt = "The answer is 42."
for model in (llama, qwen):
    c = client.completions.create(model=model, prompt=prompt, max_tokens=0, echo=True, logprobs=1)
    ch = c.choices[0]
    assert ch.text == prompt, ch.text
    lp = ch.logprobs
    assert "".join(lp.tokens) == prompt, lp.tokens
    assert len(lp.token_logprobs) == len(lp.tokens) == len(lp.text_offset)
    scored = [x for x in lp.token_logprobs if x is not None]
    assert len(scored) >= len(lp.tokens) - 1 and all(x <= 0.0 for x in scored)
    assert c.usage.completion_tokens == 0

    # Generation after the prompt, echoed, with log-probs for every generated token.
    g = client.completions.create(
        model=model, prompt=prompt, max_tokens=5, temperature=0.0, echo=True, logprobs=0
    ).choices[0]
    assert g.text.startswith(prompt)

    # Streaming completion.
    streamed = "".join(
        c.choices[0].text
        for c in client.completions.create(
            model=model, prompt=prompt, max_tokens=6, temperature=0.0, stream=True
        )
        if c.choices
    )
    plain = client.completions.create(model=model, prompt=prompt, max_tokens=6, temperature=0.0)
    assert streamed == plain.choices[0].text, (streamed, plain.choices[0].text)

# Errors come back as the client's exception types.
try:
    client.chat.completions.create(model="no-such-model", messages=messages, max_tokens=2)
    raise AssertionError("an unknown model was accepted")
except openai.NotFoundError as e:
    assert "no-such-model" in str(e)
try:
    client.chat.completions.create(model=qwen, messages=messages, max_tokens=2, temperature=5)
    raise AssertionError("temperature 5 was accepted")
except openai.BadRequestError as e:
    assert e.status_code == 400
try:
    openai.OpenAI(base_url=base + "/v1", api_key="wrong", max_retries=0).models.list()
    raise AssertionError("a wrong API key was accepted")
except openai.AuthenticationError:
    pass

print(f"openai {openai.__version__}: all checks passed")
