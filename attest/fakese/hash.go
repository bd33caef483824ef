package fakese

import "crypto"

const cryptoSHA256 = crypto.SHA256
