import { createApp } from 'vue'
import { createPinia } from 'pinia'
import App from './App.vue'
import { createConsoleRouter } from './router'
import { setupI18n } from '@/shared/i18n'
import { useAuthStore } from './stores/auth'
import './styles.css'

const app = createApp(App)
const pinia = createPinia()
app.use(pinia)
const i18n = setupI18n()
app.use(i18n)
document.documentElement.lang = i18n.global.locale.value

const auth = useAuthStore()
auth.attach()
const router = createConsoleRouter()
auth.onAuthLost(() => {
  const here = router.currentRoute.value
  if (here.name !== 'login') {
    void router.push({ name: 'login', query: { redirect: here.fullPath, expired: '1' } })
  }
})
router.afterEach((to) => {
  const page = to.meta.titleKey ? i18n.global.t(to.meta.titleKey) : ''
  document.title = page ? `${page} · ${i18n.global.t('app.name')}` : i18n.global.t('app.name')
})
app.use(router)
app.mount('#app')
