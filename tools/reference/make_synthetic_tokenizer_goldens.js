#!/usr/bin/env node
// Writes tests/fixtures/tokenizers/synthetic.json: small hand-made tokenizer.json files that
// exercise the pipeline components the three real families do not use (Metaspace, Strip,
// Prepend, Lowercase, NFKC, WordPiece-style prefixes, unk fusing, lstrip/rstrip/single_word,
// every split behaviour), each with the ids and decoded text of HF tokenizers' Rust core.
//
//   mkdir -p /tmp/hf && (cd /tmp/hf && npm install tokenizers@0.23.2)
//   NODE_PATH=/tmp/hf/node_modules node tools/reference/make_synthetic_tokenizer_goldens.js \
//       > tests/fixtures/tokenizers/synthetic.json
const { Tokenizer } = require('tokenizers');

const SP = '\u2581';
const bytes = Array.from({ length: 256 }, (_, b) => `<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`);

// Vocab of single characters plus the results of `merges`, in order; ids follow.
function bpeVocab(specials, chars, merges, prefix = '') {
  const vocab = {};
  const add = (t) => { if (!(t in vocab)) vocab[t] = Object.keys(vocab).length; };
  specials.forEach(add);
  chars.forEach(add);
  for (const [a, b] of merges) add(a + b.slice(prefix.length));
  return vocab;
}

function added(id, content, opts = {}) {
  return Object.assign({ id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true }, opts);
}

const letters = 'abcdefghijklmnopqrstuvwxyz'.split('');

// 1. SentencePiece-style (Llama 2): Prepend + Replace normalizer, byte fallback, unk fusing
//    off, Strip decoder; string merges; added tokens with lstrip/rstrip/single_word.
function sentencepiece() {
  const merges = [[SP, 't'], ['h', 'e'], [SP + 't', 'he'], [SP, 'a'], ['i', 's'], [SP, 'is'], ['e', 'r'], [SP + 'a', 'n']];
  const vocab = bpeVocab(['<unk>', '<s>', '</s>'].concat(bytes), [SP].concat(letters), merges);
  const n = Object.keys(vocab).length;
  return {
    version: '1.0', truncation: null, padding: null,
    added_tokens: [added(0, '<unk>'), added(1, '<s>'), added(2, '</s>'),
      added(n, '[L]', { lstrip: true }), added(n + 1, '[R]', { rstrip: true }),
      added(n + 2, 'word', { single_word: true, special: false }),
      added(n + 3, 'the end', { normalized: true, special: false })],
    normalizer: { type: 'Sequence', normalizers: [{ type: 'Prepend', prepend: SP }, { type: 'Replace', pattern: { String: ' ' }, content: SP }] },
    pre_tokenizer: null,
    post_processor: { type: 'TemplateProcessing', single: [{ SpecialToken: { id: '<s>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
      pair: [{ SpecialToken: { id: '<s>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }, { Sequence: { id: 'B', type_id: 1 } }],
      special_tokens: { '<s>': { id: '<s>', ids: [1], tokens: ['<s>'] } } },
    decoder: { type: 'Sequence', decoders: [{ type: 'Replace', pattern: { String: SP }, content: ' ' }, { type: 'ByteFallback' }, { type: 'Fuse' }, { type: 'Strip', content: ' ', start: 1, stop: 0 }] },
    model: { type: 'BPE', dropout: null, unk_token: '<unk>', continuing_subword_prefix: null, end_of_word_suffix: null,
      fuse_unk: false, byte_fallback: true, ignore_merges: false, vocab, merges: merges.map(([a, b]) => `${a} ${b}`) },
  };
}

// 2. Metaspace (prepend_scheme first) with no byte fallback and fused unknowns; pair merges.
function metaspace() {
  const merges = [[SP, 'h'], ['e', 'l'], ['el', 'l'], [SP + 'h', 'ell'], [SP + 'hell', 'o'], [SP, 'w'], ['o', 'r']];
  const vocab = bpeVocab(['<unk>', '<pad>'], [SP].concat(letters), merges);
  return {
    version: '1.0', truncation: null, padding: null,
    added_tokens: [added(0, '<unk>'), added(1, '<pad>')],
    normalizer: { type: 'Sequence', normalizers: [{ type: 'NFKC' }, { type: 'Lowercase' }] },
    pre_tokenizer: { type: 'Metaspace', replacement: SP, prepend_scheme: 'first', split: true },
    post_processor: null,
    decoder: { type: 'Metaspace', replacement: SP, prepend_scheme: 'first', split: true },
    model: { type: 'BPE', dropout: null, unk_token: '<unk>', continuing_subword_prefix: null, end_of_word_suffix: null,
      fuse_unk: true, byte_fallback: false, ignore_merges: false, vocab, merges },
  };
}

// 3. Word-level pre-tokenizers with a continuing-subword prefix and end-of-word suffix.
function wordpieceish() {
  const P = '##', S = '</w>';
  const chars = [];
  for (const c of letters.concat('0123456789.,!?-'.split(''))) chars.push(c, P + c, c + S, P + c + S);
  const merges = [['t', '##h'], ['th', '##e</w>'], ['a', '##n'], ['an', '##d</w>'], ['1', '##2'], ['i', '##s</w>']];
  const vocab = bpeVocab(['[UNK]', '[CLS]', '[SEP]'], chars, merges, P);
  return {
    version: '1.0', truncation: null, padding: null,
    added_tokens: [added(0, '[UNK]'), added(1, '[CLS]'), added(2, '[SEP]')],
    normalizer: { type: 'Sequence', normalizers: [{ type: 'Strip', strip_left: true, strip_right: true }, { type: 'Lowercase' },
      { type: 'Replace', pattern: { Regex: '\\s+' }, content: ' ' }] },
    pre_tokenizer: { type: 'Sequence', pretokenizers: [{ type: 'WhitespaceSplit' }, { type: 'Punctuation', behavior: 'Isolated' },
      { type: 'Digits', individual_digits: false }] },
    post_processor: { type: 'BertProcessing', sep: ['[SEP]', 2], cls: ['[CLS]', 1] },
    decoder: { type: 'WordPiece', prefix: P, cleanup: true },
    model: { type: 'BPE', dropout: null, unk_token: '[UNK]', continuing_subword_prefix: P, end_of_word_suffix: S,
      fuse_unk: false, byte_fallback: false, ignore_merges: false, vocab, merges },
  };
}

// 4. Split behaviours and GPT-2 style ByteLevel with its own regex and add_prefix_space.
function splits(behavior, invert) {
  const table = [];
  for (let b = 0; b < 256; ++b) {
    const printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
    table.push(printable ? b : 0);
  }
  let extra = 256;
  const chars = table.map((v, b) => String.fromCodePoint(v ? b : extra++));
  const merges = [[chars[32], 'a'], ['b', 'c'], [chars[32] + 'a', 'bc']];
  const vocab = bpeVocab([], chars, merges);
  return {
    version: '1.0', truncation: null, padding: null, added_tokens: [],
    normalizer: null,
    pre_tokenizer: { type: 'Sequence', pretokenizers: [
      { type: 'Split', pattern: { String: '-' }, behavior, invert },
      { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true }] },
    post_processor: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
    decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: { type: 'BPE', dropout: null, unk_token: null, continuing_subword_prefix: null, end_of_word_suffix: null,
      fuse_unk: false, byte_fallback: false, ignore_merges: false, vocab, merges },
  };
}

const TEXTS = [
  '', ' ', 'the', 'the is an', ' the  is ', 'hello world', 'Hello World', 'HELLO  wOrLd', 'abc-abc--abc-', '-a-b-',
  'xyz', 'the end', 'the end.', 'a word here', 'words', 'a word.', '[L]x', 'x [L] y', 'x   [L]', '[R]   y', 'a[R] [L]b',
  'Zürich ÄÖÜ', '中文', 'ünïcödé', 'ﬁ ① ², ＡＢＣ', '\u0130', 'don\'t , stop .', 'and the 12 and 123 and 1.5!', 'is-it?',
  'tab\there\nnewline', '  spaced  out  ', '😀 ok', '\ufffd', SP + 'x', 'the' + SP + 'end', 'ab  bc', ' a bc',
];

async function run(name, json) {
  const tok = Tokenizer.fromString(JSON.stringify(json));
  const cases = [];
  for (const text of TEXTS) {
    const ids = (await tok.encode(text, null, { addSpecialTokens: true })).getIds();
    const ids_no_special = (await tok.encode(text, null, { addSpecialTokens: false })).getIds();
    cases.push({ text, ids, ids_no_special, decoded: await tok.decode(ids, false), decoded_skip: await tok.decode(ids, true) });
  }
  return { name, tokenizer: json, cases };
}

(async () => {
  const out = [];
  out.push(await run('sentencepiece', sentencepiece()));
  out.push(await run('metaspace', metaspace()));
  out.push(await run('wordpieceish', wordpieceish()));
  for (const b of ['Removed', 'Isolated', 'MergedWithPrevious', 'MergedWithNext', 'Contiguous'])
    for (const inv of [false, true]) out.push(await run(`split_${b}_${inv ? 'inverted' : 'plain'}`, splits(b, inv)));
  process.stdout.write(JSON.stringify({ generator: 'tokenizers (node) ' + require('tokenizers/package.json').version, tokenizers: out }));
})();
