/// <reference types="vitest/config" />
import type { IncomingMessage, ServerResponse } from 'node:http'
import { fileURLToPath, URL } from 'node:url'
import { defineConfig, type Plugin } from 'vite'
import vue from '@vitejs/plugin-vue'
import Components from 'unplugin-vue-components/vite'
import { ElementPlusResolver } from 'unplugin-vue-components/resolvers'
import { VantResolver } from '@vant/auto-import-resolver'

// The dmr-cloud instance the dev server forwards API calls to.
const cloud = process.env.DMR_CLOUD_URL ?? 'http://127.0.0.1:8080'

/**
 * The dev server only knows one SPA fallback (index.html). Deep links into the phone pages
 * (/h5/l/CODE) must get h5/index.html instead, as the Rust server does in production.
 */
function h5Fallback(): Plugin {
  const rewrite = (req: IncomingMessage, _res: ServerResponse, next: () => void): void => {
    const path = (req.url ?? '').split('?')[0] ?? ''
    if (path.startsWith('/h5/') && !path.includes('.') && req.headers.accept?.includes('text/html')) {
      req.url = '/h5/index.html'
    }
    next()
  }
  return {
    name: 'dmr-h5-fallback',
    configureServer(server) {
      server.middlewares.use(rewrite)
    },
    configurePreviewServer(server) {
      server.middlewares.use(rewrite)
    },
  }
}

/**
 * Vant's icon font is inlined as woff2, with a woff fallback on a public CDN. Every browser
 * we support takes the woff2, but nothing may point outside the machine, so the fallback
 * source is removed.
 */
function noExternalFonts(): Plugin {
  return {
    name: 'dmr-no-external-fonts',
    enforce: 'pre',
    transform(code, id) {
      if (id.includes('vant') && id.endsWith('.css') && code.includes('alicdn.com')) {
        return { code: code.replace(/,\s*url\(["']?(?:https?:)?\/\/[^)]*\)\s*format\(["']?woff["']?\)/g, ''), map: null }
      }
      return null
    },
  }
}

export default defineConfig({
  plugins: [
    vue(),
    h5Fallback(),
    noExternalFonts(),
    // Element Plus and Vant components are imported per use (with their CSS) so that each
    // route chunk carries only what it renders.
    Components({
      resolvers: [ElementPlusResolver({ importStyle: 'css' }), VantResolver({ importStyle: true })],
      dts: 'components.d.ts',
      dirs: [],
    }),
  ],
  resolve: {
    alias: { '@': fileURLToPath(new URL('./src', import.meta.url)) },
  },
  build: {
    outDir: 'dist',
    emptyOutDir: true,
    // The console must run on tablets/phones with current browsers only.
    target: 'es2022',
    rolldownOptions: {
      input: {
        console: fileURLToPath(new URL('./index.html', import.meta.url)),
        h5: fileURLToPath(new URL('./h5/index.html', import.meta.url)),
      },
    },
  },
  server: {
    proxy: {
      '/api': { target: cloud, changeOrigin: true },
      '/health': { target: cloud, changeOrigin: true },
      // The sandbox payment page and the printed QR codes' short links are the cloud's.
      '/pay': { target: cloud, changeOrigin: true },
      '/q': { target: cloud, changeOrigin: true },
    },
  },
  test: {
    environment: 'happy-dom',
    include: ['tests/**/*.test.ts'],
    // Their per-component style entries import .css files, which Node cannot load: let
    // Vite process these packages in tests as it does in the build.
    server: { deps: { inline: ['element-plus', 'vant'] } },
  },
})
