#!/usr/bin/env node
// Writes tests/fixtures/tokenizers/raw/<family>.json: what HF tokenizers' Rust core alone
// (no transformers layer: tokenizer.json's own post-processor, no space cleanup) produces
// for the corpus of make_tokenizer_goldens.py plus seeded random mixtures of awkward pieces.
// The C++ test loads these with Tokenizer::from_file, which has the same semantics.
//
//   mkdir -p /tmp/hf && (cd /tmp/hf && npm install tokenizers@0.23.2)
//   python3 tools/reference/make_tokenizer_goldens.py --corpus-only /tmp/corpus.json
//   NODE_PATH=/tmp/hf/node_modules node tools/reference/make_raw_tokenizer_goldens.js \
//       ~/.cache/lmx-test-data /tmp/corpus.json tests/fixtures/tokenizers/raw
const { Tokenizer } = require('tokenizers');
const fs = require('fs');
const path = require('path');

const PIECES = [' ', '  ', '\n', '\n\n', '\t', '\r\n', ' \n', 'a', 'Hello', 'world', "'s", "'S", "'ll", "'LL", "'re",
  "n't", '123', '4567', '1', '00', '.', ',', '!', '?', '...', '-', '--', '(', ')', '"', "'", '`', '#', '@', '$', '%',
  '&', '*', '_', '+', '=', '{', '}', '[', ']', '|', '\\', '/', '<', '>', 'é', 'e\u0301', 'ü', 'ß', '中文', '日本',
  '한국', 'مرحبا', 'नमस्ते', 'Привет', 'สวัสดี', '😀', '👨\u200d👩\u200d👧', '🇺🇸', '\u00a0', '\u3000', '\u200b',
  '\u2581', 'Ġ', '<|eot_id|>', '<|begin_of_text|>', '<|im_start|>', '<|im_end|>', '<think>', '</think>',
  '<start_of_turn>', '<end_of_turn>', '<bos>', '<eos>', '<0x41>', '\ufffd', '\ue000', 'ſ', 'K', 'İ', 'ﬁ', '①', '²',
  'Ⅷ', '٣', '\u0000', '\u007f', '\u0085'];

// Seeded so that the goldens are reproducible (a 32-bit LCG is plenty here).
function randomStrings(count, seed) {
  let s = seed >>> 0;
  const next = (n) => { s = (Math.imul(s, 1664525) + 1013904223) >>> 0; return s % n; };
  const out = [];
  for (let i = 0; i < count; ++i) {
    let t = '';
    for (let k = 1 + next(12); k > 0; --k) t += PIECES[next(PIECES.length)];
    out.push(t);
  }
  return out;
}

(async () => {
  const [data, corpusFile, outDir] = process.argv.slice(2);
  const corpus = JSON.parse(fs.readFileSync(corpusFile, 'utf8')).strings;
  const texts = corpus.concat(randomStrings(400, 12345));
  fs.mkdirSync(outDir, { recursive: true });
  for (const family of ['llama3', 'qwen3', 'gemma3']) {
    const tok = Tokenizer.fromFile(path.join(data, family, 'tokenizer.json'));
    const cases = [];
    for (const text of texts) {
      const ids = (await tok.encode(text, null, { addSpecialTokens: true })).getIds();
      const ids_no_special = (await tok.encode(text, null, { addSpecialTokens: false })).getIds();
      cases.push({ text, ids, ids_no_special, decoded: await tok.decode(ids, false), decoded_skip: await tok.decode(ids, true) });
    }
    const version = require('tokenizers/package.json').version;
    fs.writeFileSync(path.join(outDir, `${family}.json`), JSON.stringify({ family, versions: { tokenizers: version }, cases, chats: [] }));
    console.error(`${family}: ${cases.length} cases`);
  }
})();
