-- The hash of each gateway's MQTT password (see broker::auth::mqtt_password_hash); set at
-- enrollment, replaced at re-enrollment. NULL: the gateway cannot log in to the broker.
ALTER TABLE gateways ADD COLUMN mqtt_password_hash TEXT;
