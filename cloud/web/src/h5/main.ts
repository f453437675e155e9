import { createApp } from 'vue'
import { Locale as VantLocale } from 'vant'
import vantZh from 'vant/es/locale/lang/zh-CN'
import vantEn from 'vant/es/locale/lang/en-US'
import App from './App.vue'
import { createH5Router } from './router'
import { setupI18n } from '@/shared/i18n'
import './styles.css'

const i18n = setupI18n()
const locale = i18n.global.locale.value
// Vant's built-in texts (loading, dialogs) follow the chosen language.
VantLocale.use(locale === 'en' ? 'en-US' : 'zh-CN', locale === 'en' ? vantEn : vantZh)
document.documentElement.lang = locale

createApp(App).use(i18n).use(createH5Router()).mount('#app')
