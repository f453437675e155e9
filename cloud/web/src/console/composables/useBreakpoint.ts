/**
 * The console's three layouts: phone (< 768 px: menu in a drawer), tablet (< 1200 px:
 * collapsed icon menu) and desktop. One shared listener for the whole app.
 */
import { computed, ref } from 'vue'

const width = ref(typeof window === 'undefined' ? 1280 : window.innerWidth)
let listening = false

export function useBreakpoint() {
  if (!listening && typeof window !== 'undefined') {
    listening = true
    window.addEventListener('resize', () => {
      width.value = window.innerWidth
    })
  }
  return {
    width,
    isPhone: computed(() => width.value < 768),
    isTablet: computed(() => width.value >= 768 && width.value < 1200),
  }
}
