import { useI18n } from 'vue-i18n'
import { formatBasisPoints, formatFen } from './money'
import { formatTime, minutesAgo } from './time'

/** Formatters for templates: money from fen, Asia/Shanghai times, "n minutes ago". */
export function useFormat() {
  const { t } = useI18n()
  return {
    money: formatFen,
    time: formatTime,
    bp: formatBasisPoints,
    /**
     * The translated name of an enum value (`label('locks.statuses', 'online')`). Element
     * Plus renders column slots once with an empty row while measuring, hence the guard.
     */
    label(prefix: string, value: string | null | undefined): string {
      return value ? t(`${prefix}.${value}`) : ''
    },
    ago(ms: number | null | undefined): string {
      if (ms === null || ms === undefined) {
        return t('common.never')
      }
      const n = minutesAgo(ms)
      return n === 0 ? t('common.justNow') : t('common.minutesAgo', { n })
    },
  }
}
