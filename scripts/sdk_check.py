"""Drives `glm serve` with the official OpenAI and Anthropic Python SDKs, as real clients.

Run by scripts/check-sdks.sh, which starts the server and passes the greedy answer
`glm run` gives for the same prompt: every route must give exactly that text.
"""

import argparse
import sys

import anthropic
import openai


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--max-tokens", type=int, required=True)
    parser.add_argument("--expected", required=True)
    args = parser.parse_args()
    expected = args.expected.strip()
    failures = []

    def check(name, got):
        ok = got.strip() == expected
        print(f"{'ok  ' if ok else 'FAIL'} {name}: {got.strip()!r}")
        if not ok:
            failures.append(name)

    client = openai.OpenAI(base_url=f"{args.base_url}/v1", api_key="unused")
    messages = [{"role": "user", "content": args.prompt}]
    common = dict(model=args.model, messages=messages, temperature=0, max_tokens=args.max_tokens,
                  extra_body={"chat_template_kwargs": {"enable_thinking": False}})
    reply = client.chat.completions.create(**common)
    check("openai chat", reply.choices[0].message.content)
    streamed = "".join(
        chunk.choices[0].delta.content or ""
        for chunk in client.chat.completions.create(**common, stream=True)
        if chunk.choices
    )
    check("openai chat, streamed", streamed)
    models = [m.id for m in client.models.list()]
    print(f"ok   openai models: {models}" if args.model in models else f"FAIL openai models: {models}")
    if args.model not in models:
        failures.append("openai models")
    try:
        client.chat.completions.create(**{**common, "model": "no-such-model"})
        failures.append("openai unknown model")
        print("FAIL openai unknown model: no error")
    except openai.NotFoundError as e:
        print(f"ok   openai unknown model: {e.status_code}")

    claude = anthropic.Anthropic(base_url=args.base_url, api_key="unused")
    # Through extra_body: SDK versions differ in which sampling fields they take.
    message_args = dict(model=args.model, max_tokens=args.max_tokens, messages=messages,
                        extra_body={"temperature": 0, "thinking": {"type": "disabled"}})
    message = claude.messages.create(**message_args)
    check("anthropic messages", "".join(b.text for b in message.content if b.type == "text"))
    with claude.messages.stream(**message_args) as stream:
        check("anthropic messages, streamed", "".join(stream.text_stream))
    counted = claude.messages.count_tokens(model=args.model, messages=messages)
    ok = counted.input_tokens > 0
    print(f"{'ok  ' if ok else 'FAIL'} anthropic count_tokens: {counted.input_tokens}")
    if not ok:
        failures.append("anthropic count_tokens")

    if failures:
        print(f"{len(failures)} failed: {', '.join(failures)}")
        return 1
    print("all SDK checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
