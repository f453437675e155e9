/**
 * The console's one API client. Its auth hooks are attached by the auth store
 * (see stores/auth.ts) so that this module has no dependency on Pinia.
 */
import { HttpClient } from '@/shared/http'

export const api = new HttpClient()
