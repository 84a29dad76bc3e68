#!/usr/bin/env python3
"""Writes the tokenizer goldens that tests/text/tokenizer_golden_test.cpp compares against.

For each family (llama3, qwen3, gemma3) it loads the real tokenizer files fetched by
scripts/fetch-test-data.sh and records, for every string of a fixed corpus, what HF
transformers does:

  ids             AutoTokenizer(text)["input_ids"]                   (add_special_tokens=True)
  ids_no_special  AutoTokenizer(text, add_special_tokens=False)["input_ids"]
  raw_ids         tokenizers.Tokenizer.from_file(...).encode(text).ids (the Rust library alone)
  decoded         tokenizer.decode(ids, skip_special_tokens=False)
  decoded_skip    tokenizer.decode(ids, skip_special_tokens=True)

and for a few conversations (Qwen3's with tools too) the text of
apply_chat_template(tokenize=False) together with the messages and keyword arguments, so
that the C++ tests can replay them.

Runs offline. Usage:
  python3 tools/reference/make_tokenizer_goldens.py --data ~/.cache/lmx-test-data \\
      --out tests/fixtures/tokenizers/
  python3 tools/reference/make_tokenizer_goldens.py --data ~/.cache/lmx-test-data --bench
  python3 tools/reference/make_tokenizer_goldens.py --corpus-only /tmp/corpus.json
"""
import argparse
import json
import os
import sys
import time
import unicodedata

FAMILIES = ["llama3", "qwen3", "gemma3"]


def build_corpus():
    c = []
    # Plain English prose and punctuation.
    c += [
        "Hello world",
        "Hello, world!",
        "The quick brown fox jumps over the lazy dog.",
        "It was the best of times, it was the worst of times, it was the age of wisdom, it was the age of "
        "foolishness, it was the epoch of belief, it was the epoch of incredulity.",
        "Mr. O'Neill's dog can't swim; isn't that odd? Yes -- very odd!",
        "\"Quoted text,\" she said. 'Single quotes' too.",
        "e.g. i.e. etc. U.S.A. Ph.D.",
        "Don't stop believing . Hold on to that feeling , ok ?",
        "a b c d e f g",
        "ALL CAPS SENTENCE WITH SHOUTING",
        "camelCaseIdentifier snake_case_identifier kebab-case-identifier",
        "supercalifragilisticexpialidocious antidisestablishmentarianism",
        "Hyphen-ated words and em\u2014dashes and en\u2013dashes.",
        "Ellipsis\u2026 and curly \u201cquotes\u201d and \u2018apostrophes\u2019.",
    ]
    # Contractions in every case (the (?i:'s|...) alternative).
    c += [
        "I'm you're he's she'll we've they'd it's",
        "I'M YOU'RE HE'S SHE'LL WE'VE THEY'D IT'S",
        "John'S car and Mary'Ll come, we'Ve seen it'D happen",
        "'s 't 're 've 'm 'll 'd",
        "rock'n'roll o'clock y'all",
        "don't DON'T Don'T",
        "\u2019s curly apostrophe isn\u2019t matched",
    ]
    # Code.
    c += [
        "def f(x):\n    return x * 2\n",
        "for (int i = 0; i < n; ++i) {\n\tsum += a[i];\n}\n",
        "#include <stdio.h>\nint main(void) { printf(\"%d\\n\", 42); return 0; }",
        "const x = () => { return `template ${literal}`; };",
        "SELECT id, name FROM users WHERE age >= 18 ORDER BY name DESC;",
        "<html><body><p class=\"x\">Hi &amp; bye</p></body></html>",
        "{\"key\": [1, 2.5, -3e10, true, null], \"nested\": {\"a\": \"b\"}}",
        "if x!=y and a<=b or c>>=2: pass",
        "    indented with spaces\n\t\tindented with tabs\n",
        "path/to/file.txt C:\\Windows\\System32 https://example.com/a?b=c&d=e#frag",
        "user@example.com +1-555-0100 #hashtag @mention",
        "x_1 = np.array([[1, 2], [3, 4]]) @ W.T  # matmul",
        "a==b!=c<=d>=e->f=>g::h",
        "/* block comment */ // line comment\n-- sql comment",
    ]
    # Scripts.
    c += [
        "\u4f60\u597d\uff0c\u4e16\u754c\uff01\u8fd9\u662f\u4e00\u4e2a\u6d4b\u8bd5\u3002",
        "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8\u3067\u3059\u3002\u30ab\u30bf\u30ab\u30ca\u3068\u3072\u3089\u304c\u306a\u3002",
        "\ud55c\uad6d\uc5b4 \ud14d\uc2a4\ud2b8\uc785\ub2c8\ub2e4.",
        "\u0645\u0631\u062d\u0628\u0627 \u0628\u0627\u0644\u0639\u0627\u0644\u0645",
        "\u0928\u092e\u0938\u094d\u0924\u0947 \u0926\u0941\u0928\u093f\u092f\u093e",
        "\u041f\u0440\u0438\u0432\u0435\u0442, \u043c\u0438\u0440! \u041a\u0430\u043a \u0434\u0435\u043b\u0430?",
        "\u0e2a\u0e27\u0e31\u0e2a\u0e14\u0e35\u0e0a\u0e32\u0e27\u0e42\u0e25\u0e01",
        "\u05e9\u05dc\u05d5\u05dd \u05e2\u05d5\u05dc\u05dd",
        "\u0393\u03b5\u03b9\u03ac \u03c3\u03bf\u03c5 \u039a\u03cc\u03c3\u03bc\u03b5",
        "\u10d2\u10d0\u10db\u10d0\u10e0\u10ef\u10dd\u10d1\u10d0",
        "\u0531\u0562\u0563\u0564 \u0570\u0561\u0575\u0565\u0580\u0565\u0576",
        "\u1210\u1208\u1290 \u12a0\u121b\u122d\u129b",
        "\u0bb5\u0ba3\u0b95\u0bcd\u0b95\u0bae\u0bcd \u0ba4\u0bae\u0bbf\u0bb4\u0bcd",
        "\u09ac\u09be\u0982\u09b2\u09be \u09ad\u09be\u09b7\u09be",
        "Ti\u1ebfng Vi\u1ec7t c\u00f3 d\u1ea5u",
        "Stra\u00dfe \u00fcber \u00e4\u00f6\u00fc \u00c4\u00d6\u00dc \u00e9\u00e8\u00ea \u00e7\u00f1",
        "Mixed English \u4e2d\u6587 \u0627\u0644\u0639\u0631\u0628\u064a\u0629 \u0440\u0443\u0441\u0441\u043a\u0438\u0439 \u0939\u093f\u0928\u094d\u0926\u0940 text",
        "\u4e00\u4e8c\u4e09\u56db\u4e94\u516d\u4e03\u516b\u4e5d\u5341",
        "\U00020000\U0002a6d6 rare CJK extension B",
        "\u2460\u2461\u2462 \u00bd \u00b2 \u2167 \u0661\u0662\u0663 \u0967\u0968\u0969",
    ]
    # Emoji, ZWJ sequences, flags, skin tones, variation selectors.
    c += [
        "\U0001f600\U0001f603\U0001f604",
        "I \u2764\ufe0f NY",
        "\U0001f468\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466 family",
        "\U0001f44d\U0001f3fd thumbs",
        "\U0001f1fa\U0001f1f8\U0001f1ef\U0001f1f5 flags",
        "\U0001f3f3\ufe0f\u200d\U0001f308 rainbow flag",
        "emoji\U0001f680in\U0001f680between",
        "\U0001f9d1\u200d\U0001f4bb coder \U0001f469\U0001f3fe\u200d\U0001f52c",
        "\u263a \u263a\ufe0e \u263a\ufe0f",
    ]
    # Combining marks in both normal forms.
    for word in ["caf\u00e9", "na\u00efve r\u00e9sum\u00e9", "\u1e9b\u0323", "\uac00\ud7a3", "\u00c5ngstr\u00f6m \u212b",
                 "\ufb01 ligature \u2126 ohm"]:
        c.append(unicodedata.normalize("NFC", word))
        c.append(unicodedata.normalize("NFD", word))
    c += [
        "e\u0301\u0302\u0303 stacked marks",
        "a\u0308\u0304 \u0915\u094d\u0937 \u0e01\u0e34\u0e4a",
        "Z\u0351\u036b\u0343\u036a\u0302\u036b\u033d\u034f\u0334\u0319\u0324\u031e\u0349\u035a\u032f\u031e\u0320\u034dalgo",
    ]
    # Whitespace runs (the \s+(?!\S) subtlety).
    c += [
        " ",
        "  ",
        "   leading spaces",
        "trailing spaces   ",
        "two  spaces   three    four",
        "\t",
        "\ttab\tseparated\tvalues\t",
        "\n",
        "\n\n",
        "line one\nline two\n\nline four\n\n\n",
        "windows\r\nline\r\nendings\r\n",
        " \n \n  \n",
        "mixed \t \n whitespace \r\n\t end",
        "word\u00a0nbsp\u2003emspace\u3000ideographic",
        "\u2028line separator\u2029paragraph separator",
        "\u200bzero\u200bwidth\u200bspace",
        "a\n\tb\n\t\tc\n\t\t\td",
        "                                                                   long run of spaces",
        "end with newline\n",
        " \u00a0 ",
    ]
    # Digits and numbers.
    c += [
        "0",
        "12",
        "123",
        "1234",
        "12345678901234567890",
        "3.14159265358979323846",
        "1,234,567.89",
        "-42 +17 1e-9 0x1F 0b1010 0o777",
        "Call 555-0199 or (555) 010-0199.",
        "2024-07-26T12:34:56Z",
        "v1.2.3-rc.4+build.5",
        "\uff11\uff12\uff13 fullwidth digits",
        "99 bottles, 1000000 reasons, 007",
    ]
    # Special-token strings inside ordinary text.
    c += [
        "<|begin_of_text|>Hello",
        "Hello<|eot_id|>",
        "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>",
        "text <|eot_id|> more text",
        "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n",
        " <|im_start|> spaced <|im_end|> ",
        "<|endoftext|>",
        "<think>\nreasoning here\n</think>\n\nanswer",
        "<tool_call>{\"name\": \"f\"}</tool_call>",
        "<bos>text<eos>",
        "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n",
        "<start_of_turn><start_of_turn>",
        "<pad><unk><mask>",
        "<|reserved_special_token_5|>",
        "<|im_start|><|im_start|>",
        "<|im_start",
        "<|eot_id|<|eot_id|>|>",
        "<0x41> literal byte token text",
        "<0xZZ> <0x> <0x0a>",
        "[INST] not special here [/INST]",
    ]
    # Odd but valid code points.
    c += [
        "",
        "\ufffd",
        "replacement \ufffd\ufffd in text",
        "\ue000\uf8ff private use",
        "\U000f0000 plane 15 private use",
        "\u2581",
        "\u2581leading lower one eighth block",
        "a\u2581b\u2581\u2581c",
        "\u0120 \u010a Gdot Cdot",
        "\x00 nul \x01 \x7f del",
        "\x1b[31mred\x1b[0m ansi",
        "\ufeffbyte order mark",
        "\u00ad soft hyphen",
        "\u202eright-to-left override",
        "\U0001d400\U0001d401 math bold",
        "\u2126 \u212a \u212b compat letters",
        "\u0130stanbul \u0131 dotless",
        "\u017f long s and \u1e9e capital sharp s",
        "x" * 300,
        "ab" * 150,
        "\u4e2d" * 100,
        "\U0001f600" * 50,
    ]
    # Longer mixed paragraphs.
    c += [
        "Tokenization is the process of breaking text into pieces. "
        "For example, \"unbelievable\" may become [\"un\", \"believ\", \"able\"]. "
        "Numbers like 1234567 are split into groups; emoji like \U0001f600 become bytes.",
        "## Heading\n\n- item one\n- item two\n\n```python\nprint('hi')\n```\n\n| a | b |\n|---|---|\n| 1 | 2 |\n",
        "Q: What is 2+2?\nA: 4.\n\nQ: Why?\nA: Because.",
        "  Leading and trailing whitespace with \u00e9 and \u4e2d and 42  ",
    ]
    return c


# Conversations replayed through apply_chat_template. "kwargs" are passed as keyword
# arguments and also become template variables in the C++ test.
def build_chats(family):
    sys_user = [{"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": "What is the capital of France?"}]
    multi = [{"role": "user", "content": "Hi there!"},
             {"role": "assistant", "content": "Hello! How can I help you today?"},
             {"role": "user", "content": "Tell me a joke about cats."}]
    user_only = [{"role": "user", "content": "  Spaces around \u00e9 \u4e2d  "}]
    base = {"date_string": "26 Jul 2024"} if family == "llama3" else {}
    chats = []
    for messages in (sys_user, multi, user_only):
        for gen in (True, False):
            chats.append({"messages": messages, "kwargs": dict(base, add_generation_prompt=gen)})
    # A reply begun for the model (continue_final_message), its text with and without spacing
    # that a template may trim.
    go_on = dict(base, add_generation_prompt=False, continue_final_message=True)
    chats.append({"messages": sys_user + [{"role": "assistant", "content": "The capital of France is"}],
                  "kwargs": go_on})
    chats.append({"messages": multi + [{"role": "assistant", "content": "  Why did the cat \n"}], "kwargs": go_on})
    if family == "qwen3":
        chats.append({"messages": multi, "kwargs": {"add_generation_prompt": True, "enable_thinking": False}})
        chats.append({"messages": sys_user, "kwargs": {"add_generation_prompt": True, "enable_thinking": True}})
        with_reasoning = multi[:2] + [{"role": "assistant", "content": "<think>\nhmm\n</think>\n\nSure."},
                                      {"role": "user", "content": "Again"}]
        chats.append({"messages": [multi[0]] + with_reasoning[2:], "kwargs": {"add_generation_prompt": True}})
        chats += tool_chats()
    return chats


# Tools offered, called (two calls at once, an assistant message with no content) and
# answered, as an OpenAI-compatible server passes them on: each call's arguments an object.
def tool_chats():
    city = {"type": "object", "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["C", "F"]}},
            "required": ["city"]}
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "The weather in a city.",
                                               "parameters": city}},
             {"type": "function", "function": {"name": "get_time", "description": "Local time, \u00e0 la minute.",
                                               "parameters": {"type": "object",
                                                              "properties": {"zone": {"type": "string"}}}}}]

    def call(id_, name, args):
        return {"id": id_, "type": "function", "function": {"name": name, "arguments": args}}

    asked = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Weather and time in Paris?"}]
    called = asked + [
        {"role": "assistant", "content": "",
         "tool_calls": [call("call_1", "get_weather", {"city": "Paris", "unit": "C"}),
                        call("call_2", "get_time", {"zone": "Europe/Paris"})]},
        {"role": "tool", "tool_call_id": "call_1", "content": "{\"temp\": 21}"},
        {"role": "tool", "tool_call_id": "call_2", "content": "14:05"}]
    answered = called + [{"role": "assistant", "content": "21 \u00b0C at 14:05."},
                         {"role": "user", "content": "And in Lyon?"},
                         {"role": "assistant", "content": "Checking.",
                          "tool_calls": [call("call_3", "get_weather", {"city": "Lyon"})]},
                         {"role": "tool", "tool_call_id": "call_3", "content": "{\"temp\": 19}"}]
    forced = asked + [{"role": "assistant", "content": "<tool_call>\n{\"name\": \"get_time\", \"arguments\": "}]
    return [{"messages": asked, "kwargs": {"add_generation_prompt": True, "tools": tools}},
            {"messages": forced, "kwargs": {"add_generation_prompt": False, "continue_final_message": True,
                                            "tools": tools}},
            {"messages": asked[1:], "kwargs": {"add_generation_prompt": True, "tools": tools}},
            {"messages": called, "kwargs": {"add_generation_prompt": True, "tools": tools}},
            {"messages": answered, "kwargs": {"add_generation_prompt": True, "tools": tools, "enable_thinking": False}}]


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def versions():
    out = {}
    for mod in ("tokenizers", "transformers"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception as e:  # noqa: BLE001 - recorded, not fatal
            out[mod] = f"unavailable: {e}"
    return out


def load(data_dir, family):
    from transformers import AutoTokenizer
    import tokenizers
    path = os.path.join(data_dir, family)
    hf = AutoTokenizer.from_pretrained(path, local_files_only=True)
    raw = tokenizers.Tokenizer.from_file(os.path.join(path, "tokenizer.json"))
    return hf, raw


def make_family(data_dir, family):
    hf, raw = load(data_dir, family)
    log(f"{family}: {type(hf).__name__}, vocab {len(hf)}")
    cases = []
    corpus = build_corpus()
    for i, text in enumerate(corpus):
        ids = hf(text)["input_ids"]
        ids_ns = hf(text, add_special_tokens=False)["input_ids"]
        cases.append({
            "text": text,
            "ids": ids,
            "ids_no_special": ids_ns,
            "raw_ids": raw.encode(text).ids,
            "decoded": hf.decode(ids, skip_special_tokens=False),
            "decoded_skip": hf.decode(ids, skip_special_tokens=True),
        })
        if (i + 1) % 50 == 0:
            log(f"{family}: {i + 1}/{len(corpus)} strings")
    chats = []
    for chat in build_chats(family):
        try:
            rendered = hf.apply_chat_template(chat["messages"], tokenize=False, **chat["kwargs"])
        except Exception as e:  # noqa: BLE001 - a template that raises is recorded as such
            rendered = None
            chat = dict(chat, error=str(e))
        chats.append(dict(chat, rendered=rendered))
    log(f"{family}: {len(chats)} chat renders")
    return {
        "family": family,
        "versions": versions(),
        "tokenizer_class": type(hf).__name__,
        "bos_token": hf.bos_token,
        "eos_token": hf.eos_token,
        "clean_up_tokenization_spaces": bool(getattr(hf, "clean_up_tokenization_spaces", False)),
        "cases": cases,
        "chats": chats,
    }


def bench(data_dir, families, megabytes):
    os.environ["RAYON_NUM_THREADS"] = "1"
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    import tokenizers
    corpus = "\n".join(build_corpus())
    text = (corpus * (int(megabytes * 1e6) // len(corpus.encode()) + 1))
    # Cut into document-sized strings, as an encode loop sees them.
    docs = [text[i:i + 4000] for i in range(0, len(text), 4000)]
    nbytes = sum(len(d.encode()) for d in docs)
    results = {}
    for family in families:
        tok = tokenizers.Tokenizer.from_file(os.path.join(data_dir, family, "tokenizer.json"))
        tok.encode(docs[0])
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            for d in docs:
                tok.encode(d, add_special_tokens=False)
            best = min(best, time.perf_counter() - t0)
        results[family] = {"bytes": nbytes, "seconds": best, "mb_per_s": nbytes / best / 1e6}
        log(f"{family}: {nbytes / best / 1e6:.2f} MB/s")
    print(json.dumps({"tokenizers": versions()["tokenizers"], "threads": 1, "results": results}, indent=1))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.path.expanduser("~/.cache/lmx-test-data"))
    ap.add_argument("--out", default="tests/fixtures/tokenizers")
    ap.add_argument("--only", nargs="*", default=FAMILIES)
    ap.add_argument("--bench", action="store_true", help="time single-thread HF encode instead")
    ap.add_argument("--bench-mb", type=float, default=1.0)
    ap.add_argument("--corpus-only", metavar="FILE", help="write the corpus strings as JSON and stop")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    if args.corpus_only:
        with open(args.corpus_only, "w", encoding="utf-8") as f:
            json.dump({"strings": build_corpus(), "chats": {f: build_chats(f) for f in FAMILIES}}, f,
                      ensure_ascii=False)
        return
    if args.bench:
        bench(args.data, args.only, args.bench_mb)
        return
    os.makedirs(args.out, exist_ok=True)
    for family in args.only:
        if not os.path.exists(os.path.join(args.data, family, "tokenizer.json")):
            log(f"{family}: no tokenizer.json under {args.data}/{family}; run scripts/fetch-test-data.sh")
            continue
        result = make_family(args.data, family)
        path = os.path.join(args.out, f"{family}.json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(result, f, ensure_ascii=False, separators=(",", ":"))
        log(f"{family}: wrote {path} ({os.path.getsize(path) / 1e3:.0f} kB)")


if __name__ == "__main__":
    main()
