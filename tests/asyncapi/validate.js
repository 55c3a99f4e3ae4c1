// Parses AsyncAPI documents with the reference parser (@asyncapi/parser) and prints every
// diagnostic; exits 1 when any document has a diagnostic of severity error (0).
// Usage: NODE_PATH=<dir with @asyncapi/parser> node validate.js FILE...
'use strict';
const fs = require('fs');
const { Parser } = require('@asyncapi/parser');

const SEVERITY = ['error', 'warning', 'info', 'hint'];

async function check(parser, file) {
  const { document, diagnostics } = await parser.parse(fs.readFileSync(file, 'utf8'));
  const errors = diagnostics.filter((d) => d.severity === 0);
  for (const d of diagnostics) {
    console.log(`${file}: ${SEVERITY[d.severity] || d.severity} ${d.code} at ${(d.path || []).join('.')}: ${d.message}`);
  }
  const channels = document ? document.channels().length : 0;
  const verdict = errors.length === 0 && document ? 'valid' : 'INVALID';
  console.log(`${file}: ${verdict} AsyncAPI ${document ? document.version() : '?'}, ${channels} channel(s), ${errors.length} error(s), ${diagnostics.length - errors.length} other diagnostic(s)`);
  return errors.length === 0 && Boolean(document);
}

(async () => {
  const parser = new Parser();
  let ok = true;
  for (const file of process.argv.slice(2)) {
    ok = (await check(parser, file)) && ok;
  }
  process.exit(ok ? 0 : 1);
})().catch((e) => {
  console.error(e);
  process.exit(1);
});
