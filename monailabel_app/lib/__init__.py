"""The MONAI Label app's parts: infer and train tasks over the bundle, the result writer, request errors."""
