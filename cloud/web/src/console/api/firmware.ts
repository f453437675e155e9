/**
 * Firmware releases (cloud/src/firmware): vendor-signed lock controller images that
 * platform admins publish and technicians download to flash with `dmr-tech flash --file`.
 * The server checks every upload (header, hardware, length, vendor signature, hash) and
 * answers 422 naming what is wrong, 409 for a version already published, 413 over its size
 * limit.
 */
import { api } from './client'
import { seg, type Page } from '@/shared/http'

const V1 = '/api/v1'

export interface FirmwareRelease {
  id: string
  hardware: number
  version: string
  size_bytes: number
  payload_len: number
  payload_sha256: string
  image_sha256: string
  key_id: number
  notes: string
  status: 'published' | 'withdrawn' | string
  created_by: string
  created_by_name: string | null
  created_at: number
  withdrawn_by: string | null
  withdrawn_by_name: string | null
  withdrawn_at: number | null
  withdrawn_reason: string | null
}

export interface FirmwareListParams {
  page?: number
  per_page?: number
  status?: string
}

export interface FirmwareUpload {
  file: Blob
  /** The version the person expects the image to carry (major.minor.patch); optional. */
  version?: string
  notes?: string
}

export const VERSION_RE = /^\d{1,3}\.\d{1,3}\.\d{1,5}$/

/** Hardware type names (protocol registers: 1 = lock controller). */
export const HARDWARE_NAMES: Record<number, string> = { 1: 'lock' }

export const firmwareApi = {
  list: (p: FirmwareListParams) => api.get<Page<FirmwareRelease>>(`${V1}/firmware-releases`, p),
  upload: (u: FirmwareUpload) =>
    api.upload<FirmwareRelease>(`${V1}/firmware-releases`, u.file, { version: u.version, notes: u.notes }),
  withdraw: (id: string, reason: string) =>
    api.post<FirmwareRelease>(`${V1}/firmware-releases/${seg(id)}/withdraw`, { reason }),
  image: (id: string) => api.download(`${V1}/firmware-releases/${seg(id)}/image`, undefined, 'application/octet-stream'),
}

/** Checks made before sending (the server checks again): field -> i18n key. */
export function validateUpload(u: { file: Blob | null; version: string; notes: string }): Record<string, string> {
  const errors: Record<string, string> = {}
  if (!u.file) {
    errors['image'] = 'firmware.errors.fileRequired'
  } else if (u.file.size === 0) {
    errors['image'] = 'firmware.errors.fileEmpty'
  }
  if (u.version.trim() !== '' && !VERSION_RE.test(u.version.trim())) {
    errors['version'] = 'firmware.errors.version'
  }
  if (u.notes.length > 2000) {
    errors['notes'] = 'firmware.errors.notes'
  }
  return errors
}
