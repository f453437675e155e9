import { readdirSync, readFileSync, statSync } from 'node:fs'
import { join } from 'node:path'
import { beforeEach, describe, expect, it } from 'vitest'
import { DEFAULT_LOCALE, messages, savedLocale, setupI18n } from '@/shared/i18n'

function keysOf(obj: object, prefix = ''): string[] {
  return Object.entries(obj).flatMap(([k, v]) =>
    typeof v === 'object' && v !== null ? keysOf(v as object, `${prefix}${k}.`) : [`${prefix}${k}`],
  )
}

function sourceFiles(dir: string): string[] {
  return readdirSync(dir).flatMap((f) => {
    const p = join(dir, f)
    return statSync(p).isDirectory() ? sourceFiles(p) : /\.(vue|ts)$/.test(f) ? [p] : []
  })
}

describe('i18n', () => {
  beforeEach(() => localStorage.clear())

  it('defaults to Simplified Chinese', () => {
    expect(DEFAULT_LOCALE).toBe('zh-CN')
    expect(savedLocale()).toBe('zh-CN')
    const i18n = setupI18n()
    expect(i18n.global.locale.value).toBe('zh-CN')
    expect(i18n.global.t('auth.login')).toBe('登录')
  })

  it('remembers English when chosen', () => {
    localStorage.setItem('dmr.locale', 'en')
    expect(setupI18n().global.t('auth.login')).toBe('Log in')
    localStorage.setItem('dmr.locale', 'fr')
    expect(savedLocale()).toBe('zh-CN')
  })

  it('has the same keys in both languages', () => {
    expect(keysOf(messages.en).sort()).toEqual(keysOf(messages['zh-CN']).sort())
  })

  it('defines every literal key the source uses', () => {
    const known = new Set(keysOf(messages['zh-CN']))
    const missing: string[] = []
    for (const file of sourceFiles(join(__dirname, '..', 'src'))) {
      const text = readFileSync(file, 'utf8')
      for (const m of text.matchAll(/\bt\('([a-zA-Z0-9_.]+)'/g)) {
        if (!known.has(m[1]!)) missing.push(`${file}: ${m[1]}`)
      }
      // Keys built from a prefix and a value (`roles.${role}`) must exist for some value.
      for (const m of [...text.matchAll(/\bt\(`([a-zA-Z0-9_.]+)\.\$\{/g), ...text.matchAll(/\blabel\('([a-zA-Z0-9_.]+)'/g)]) {
        const prefix = `${m[1]}.`
        if (![...known].some((k) => k.startsWith(prefix))) missing.push(`${file}: ${prefix}*`)
      }
    }
    expect(missing).toEqual([])
  })
})
