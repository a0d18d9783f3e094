/**
 * A small zod → JSON Schema converter for the schemas this project declares (objects, strings,
 * numbers, booleans, enums, arrays, unions, optional/default/nullable, effects), used for the OpenAPI
 * document and docs/options.md. Descriptions come from .describe(), so each option is written once.
 */
import { z } from 'zod';

export type JsonSchema = Record<string, unknown>;

/** The JSON Schema of a zod type; `io: 'input'` describes what a client may send. */
export function toJsonSchema(t: z.ZodTypeAny): JsonSchema {
  const out = convert(t);
  if (t.description && out.description === undefined) out.description = t.description;
  return out;
}

function convert(t: z.ZodTypeAny): JsonSchema {
  const d = t._def as { typeName: string; description?: string } & Record<string, unknown>;
  const withDesc = (s: JsonSchema): JsonSchema => (d.description ? { ...s, description: d.description } : s);
  switch (d.typeName) {
    case 'ZodString': {
      const s: JsonSchema = { type: 'string' };
      for (const c of (t as z.ZodString)._def.checks) {
        if (c.kind === 'min') s.minLength = c.value;
        if (c.kind === 'max') s.maxLength = c.value;
        if (c.kind === 'regex') s.pattern = c.regex.source;
      }
      return withDesc(s);
    }
    case 'ZodNumber': {
      const s: JsonSchema = { type: 'number' };
      for (const c of (t as z.ZodNumber)._def.checks) {
        if (c.kind === 'int') s.type = 'integer';
        if (c.kind === 'min') s.minimum = c.value;
        if (c.kind === 'max') s.maximum = c.value;
      }
      return withDesc(s);
    }
    case 'ZodBoolean':
      return withDesc({ type: 'boolean' });
    case 'ZodLiteral':
      return withDesc({ const: (t as z.ZodLiteral<unknown>)._def.value });
    case 'ZodEnum':
      return withDesc({ type: 'string', enum: (t as z.ZodEnum<[string, ...string[]]>)._def.values });
    case 'ZodArray':
      return withDesc({ type: 'array', items: toJsonSchema((t as z.ZodArray<z.ZodTypeAny>)._def.type) });
    case 'ZodRecord':
      return withDesc({ type: 'object', additionalProperties: toJsonSchema((t as z.ZodRecord)._def.valueType) });
    case 'ZodUnknown':
    case 'ZodAny':
      return withDesc({});
    case 'ZodUnion':
      return withDesc({ anyOf: (t as z.ZodUnion<[z.ZodTypeAny, ...z.ZodTypeAny[]]>)._def.options.map(toJsonSchema) });
    case 'ZodNullable':
      return withDesc({ anyOf: [toJsonSchema((t as z.ZodNullable<z.ZodTypeAny>)._def.innerType), { type: 'null' }] });
    case 'ZodOptional':
      return withDesc(toJsonSchema((t as z.ZodOptional<z.ZodTypeAny>)._def.innerType));
    case 'ZodDefault': {
      const def = (t as z.ZodDefault<z.ZodTypeAny>)._def;
      return withDesc({ ...toJsonSchema(def.innerType), default: def.defaultValue() });
    }
    case 'ZodEffects': {
      // tmo fields: a string or number transformed to seconds | "off".
      return withDesc(toJsonSchema((t as z.ZodEffects<z.ZodTypeAny>)._def.schema));
    }
    case 'ZodObject': {
      const shape = (t as z.AnyZodObject).shape as Record<string, z.ZodTypeAny>;
      const properties: Record<string, JsonSchema> = {};
      const required: string[] = [];
      for (const [k, v] of Object.entries(shape)) {
        properties[k] = toJsonSchema(v);
        if (!v.isOptional()) required.push(k);
      }
      const s: JsonSchema = { type: 'object', properties };
      if (required.length) s.required = required;
      if ((t as z.AnyZodObject)._def.unknownKeys === 'strict') s.additionalProperties = false;
      return withDesc(s);
    }
    default:
      return withDesc({});
  }
}

/** Peels optional/default/effects wrappers; returns the default if one is declared. */
export function unwrap(t: z.ZodTypeAny): { inner: z.ZodTypeAny; default?: unknown; optional: boolean } {
  let cur = t;
  let def: unknown;
  let hasDef = false;
  let optional = false;
  for (;;) {
    const d = cur._def as { typeName: string };
    if (d.typeName === 'ZodOptional') {
      optional = true;
      cur = (cur as z.ZodOptional<z.ZodTypeAny>)._def.innerType;
    } else if (d.typeName === 'ZodDefault') {
      hasDef = true;
      def = (cur as z.ZodDefault<z.ZodTypeAny>)._def.defaultValue();
      cur = (cur as z.ZodDefault<z.ZodTypeAny>)._def.innerType;
    } else if (d.typeName === 'ZodEffects') {
      cur = (cur as z.ZodEffects<z.ZodTypeAny>)._def.schema;
    } else break;
  }
  return hasDef ? { inner: cur, default: def, optional } : { inner: cur, optional };
}
