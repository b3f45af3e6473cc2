declare module 'mailsplit' {
  export class Headers {
    constructor(headers: Buffer | string);
    get(key: string): string[];
    getDecoded(key: string): { key: string; value: string }[];
    hasHeader(key: string): boolean;
    /** The libmime instance the parser uses (RFC 2047 encoded-word decoding). */
    libmime: { decodeWords(text: string): string };
  }
}
