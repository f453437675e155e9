import { computed } from 'vue'
import { useI18n } from 'vue-i18n'
import { isLocale, rememberLocale, type Locale } from './i18n'

/** The current language and a setter that also remembers the choice. */
export function useLocale() {
  const { locale } = useI18n()
  const current = computed<Locale>({
    get: () => (isLocale(locale.value) ? locale.value : 'zh-CN'),
    set: (l) => {
      locale.value = l
      rememberLocale(l)
    },
  })
  return { locale: current }
}
