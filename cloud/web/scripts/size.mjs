#!/usr/bin/env node
// Prints the gzip size of what each built page loads before it can render: the entry
// script, every chunk the page preloads (Vite emits a modulepreload link for each static
// import of the entry) and its stylesheets. Lazy route chunks and ECharts are not counted.
// Run after `npm run build`. Exits 1 when a page's initial JS is over its budget.
import { readFileSync, existsSync } from 'node:fs'
import { gzipSync } from 'node:zlib'
import { join, dirname } from 'node:path'
import { fileURLToPath } from 'node:url'

const dist = join(dirname(fileURLToPath(import.meta.url)), '..', 'dist')
const pages = [
  { name: 'console', html: 'index.html', budgetKb: 300 },
  { name: 'h5', html: 'h5/index.html', budgetKb: 120 },
]

function gz(path) {
  return gzipSync(readFileSync(path), { level: 9 }).length
}

function assetsOf(html) {
  const js = new Set()
  const css = new Set()
  for (const m of html.matchAll(/<script[^>]*type="module"[^>]*src="([^"]+)"/g)) js.add(m[1])
  for (const m of html.matchAll(/<link[^>]*rel="modulepreload"[^>]*href="([^"]+)"/g)) js.add(m[1])
  for (const m of html.matchAll(/<link[^>]*rel="stylesheet"[^>]*href="([^"]+)"/g)) css.add(m[1])
  return { js: [...js], css: [...css] }
}

/** Also follow static imports inside the chunks, in case a preload link is missing. */
function closure(files) {
  const seen = new Set(files)
  const queue = [...files]
  while (queue.length) {
    const f = queue.pop()
    const code = readFileSync(join(dist, f), 'utf8')
    for (const m of code.matchAll(/(?:^|[;\n}])\s*import\s*(?:[\w*{}\s,$]+from\s*)?["']([^"']+\.js)["']/g)) {
      const dep = join(dirname(f), m[1]).replace(/\\/g, '/')
      const abs = dep.startsWith('/') ? dep : `/${dep}`
      if (!seen.has(abs)) {
        seen.add(abs)
        queue.push(abs)
      }
    }
  }
  return [...seen]
}

if (!existsSync(join(dist, 'index.html'))) {
  console.error('dist/ is missing: run `npm run build` first')
  process.exit(2)
}

let over = false
for (const p of pages) {
  const html = readFileSync(join(dist, p.html), 'utf8')
  const { js, css } = assetsOf(html)
  const allJs = closure(js)
  const jsBytes = allJs.reduce((n, f) => n + gz(join(dist, f)), 0)
  const cssBytes = css.reduce((n, f) => n + gz(join(dist, f)), 0)
  const kb = (b) => (b / 1024).toFixed(1)
  const ok = jsBytes <= p.budgetKb * 1024
  over ||= !ok
  console.log(
    `${p.name.padEnd(8)} initial JS ${kb(jsBytes).padStart(6)} KB gzip in ${allJs.length} chunks ` +
      `(budget ${p.budgetKb} KB: ${ok ? 'OK' : 'OVER'}); initial CSS ${kb(cssBytes)} KB gzip`,
  )
  for (const f of allJs.sort()) console.log(`           ${kb(gz(join(dist, f))).padStart(6)} KB  ${f}`)
}
process.exit(over ? 1 : 0)
