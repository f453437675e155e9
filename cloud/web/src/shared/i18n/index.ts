/**
 * vue-i18n set-up shared by the console and the phone pages. Simplified Chinese is the
 * default; English is available through the language switch, and the choice is remembered
 * on this device.
 */
import { createI18n } from 'vue-i18n'
import zhCN from './zh-CN'
import en from './en'

export const LOCALES = ['zh-CN', 'en'] as const
export type Locale = (typeof LOCALES)[number]
export const DEFAULT_LOCALE: Locale = 'zh-CN'
const STORAGE_KEY = 'dmr.locale'

export type MessageSchema = typeof zhCN

export function isLocale(s: unknown): s is Locale {
  return typeof s === 'string' && (LOCALES as readonly string[]).includes(s)
}

export function savedLocale(): Locale {
  try {
    const s = globalThis.localStorage?.getItem(STORAGE_KEY)
    return isLocale(s) ? s : DEFAULT_LOCALE
  } catch {
    // Private browsing modes may refuse storage; the default is fine then.
    return DEFAULT_LOCALE
  }
}

export function setupI18n(locale: Locale = savedLocale()) {
  return createI18n<[MessageSchema], Locale, false>({
    legacy: false,
    locale,
    fallbackLocale: DEFAULT_LOCALE,
    messages: { 'zh-CN': zhCN, en },
  })
}

export type AppI18n = ReturnType<typeof setupI18n>

/** Remembers a language choice on this device and tells the document. */
export function rememberLocale(locale: Locale): void {
  try {
    globalThis.localStorage?.setItem(STORAGE_KEY, locale)
  } catch {
    // Not remembered; the switch still applies to this page.
  }
  if (typeof document !== 'undefined') {
    document.documentElement.lang = locale
  }
}

export const messages = { 'zh-CN': zhCN, en }
