#!/usr/bin/env node
// Writes name.br and name.gz next to every text file of dist/ worth compressing, so that
// dmr-cloud (cloud/src/web.rs) can answer a client that accepts Brotli or gzip without
// compressing per request. Run by `npm run build` after `vite build`. Only Node's own
// zlib: no dependency. A variant is kept only when it is smaller than the file.
import { readdirSync, readFileSync, writeFileSync, statSync, unlinkSync } from 'node:fs'
import { join, dirname, extname } from 'node:path'
import { fileURLToPath } from 'node:url'
import { brotliCompressSync, gzipSync, constants } from 'node:zlib'

const dist = process.argv[2] ?? join(dirname(fileURLToPath(import.meta.url)), '..', 'dist')
const TEXT = new Set(['.js', '.mjs', '.css', '.html', '.svg', '.json', '.txt', '.map', '.ico'])
// Below this a compressed response saves less than its headers cost.
const MIN_BYTES = 512

function* files(dir) {
  for (const name of readdirSync(dir)) {
    const p = join(dir, name)
    if (statSync(p).isDirectory()) yield* files(p)
    else yield p
  }
}

let plain = 0
let gz = 0
let br = 0
let count = 0
for (const p of [...files(dist)]) {
  if (p.endsWith('.gz') || p.endsWith('.br')) {
    // Left over from an earlier build into the same folder: the file may have changed.
    unlinkSync(p)
    continue
  }
  if (!TEXT.has(extname(p))) continue
  const data = readFileSync(p)
  if (data.length < MIN_BYTES) continue
  const variants = [
    ['.gz', gzipSync(data, { level: 9 })],
    [
      '.br',
      brotliCompressSync(data, {
        params: {
          [constants.BROTLI_PARAM_QUALITY]: constants.BROTLI_MAX_QUALITY,
          [constants.BROTLI_PARAM_SIZE_HINT]: data.length,
          [constants.BROTLI_PARAM_MODE]: constants.BROTLI_MODE_TEXT,
        },
      }),
    ],
  ]
  plain += data.length
  count++
  for (const [suffix, bytes] of variants) {
    if (bytes.length >= data.length) continue
    writeFileSync(p + suffix, bytes)
    if (suffix === '.gz') gz += bytes.length
    else br += bytes.length
  }
}
const kb = (n) => (n / 1024).toFixed(1) + ' KB'
console.log(`compressed ${count} files: ${kb(plain)} plain, ${kb(gz)} gzip, ${kb(br)} brotli`)
